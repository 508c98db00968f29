"""The example bank, version 3: the account moved to bank.ledger, deposits carry a memo."""

MODEL = "bank.ledger"  # the module of the model's aggregate
