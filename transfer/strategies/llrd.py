"""Layer-wise learning-rate decay: every layer trains, at learning_rate x decay^depth (the top layer at depth 0);
the head at its own head_learning_rate."""
from transfer.schema import DECAY, LEARNING_RATE
from transfer.strategies import Plan

PARAMS = {"learning_rate": LEARNING_RATE, "decay": DECAY, "head_learning_rate": LEARNING_RATE}


def build(model, params, **_):
    from transfer.strategies._layerwise import layerwise_groups

    cfg = params["llrd"]
    return Plan(model, layerwise_groups(model, cfg["learning_rate"], cfg["decay"], cfg["head_learning_rate"],
                                        params["train"]["weight_decay"]))
