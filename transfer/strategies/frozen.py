"""Frozen feature extraction: the pretrained encoder stays as it is; only the classification head trains."""
from transfer.schema import LEARNING_RATE
from transfer.strategies import Plan

PARAMS = {"learning_rate": LEARNING_RATE}


def build(model, params, **_):
    from transfer.strategies._layerwise import freeze_all_but, head_parameters

    freeze_all_but(model, head_parameters(model))
    return Plan(model)
