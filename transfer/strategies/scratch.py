"""The same architecture and tokenizer with random weights: what the model would be without pretraining."""
from transfer.schema import LEARNING_RATE
from transfer.strategies import Plan

PARAMS = {"learning_rate": LEARNING_RATE}


def build(model, params, **_):
    return Plan(type(model)(model.config))
