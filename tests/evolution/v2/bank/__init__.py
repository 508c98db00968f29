"""The example bank, version 2: the v1 fixture stores read through upcast steps and renames."""

MODEL = "bank.accounts"  # the module of the model's aggregate
