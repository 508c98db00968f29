"""The example bank, version 1: the model the fixture stores were written with."""

MODEL = "bank.accounts"  # the module of the model's aggregate
