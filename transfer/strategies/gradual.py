"""ULMFiT gradual unfreezing: the head first, then one more layer from the top every `unfreeze_every` steps or
epochs, embeddings last, with layer-wise decayed learning rates."""
from transfer.schema import DECAY, LEARNING_RATE, POSITIVE_INT, UserError, choice
from transfer.strategies import Plan

PARAMS = {"learning_rate": LEARNING_RATE, "decay": DECAY, "head_learning_rate": LEARNING_RATE,
          "unfreeze_every": POSITIVE_INT, "unfreeze_unit": choice("steps", "epochs")}


def check(params, config):
    if params["launcher"]["processes"] > 1:
        raise UserError("strategy gradual unfreezes layers while it trains, and DDP syncs only the weights that "
                        "trained from the start: with launcher.processes above 1 the processes would drift apart. "
                        "Set launcher.processes to 1 for gradual, or use llrd (its layer-wise rates, all layers "
                        "training).")


def build(model, params, **_):
    from transfer.strategies._layerwise import GradualUnfreezing, layerwise_groups

    cfg = params["gradual"]
    groups = layerwise_groups(model, cfg["learning_rate"], cfg["decay"], cfg["head_learning_rate"],
                              params["train"]["weight_decay"], only_trainable=False)
    return Plan(model, groups, [GradualUnfreezing(model, cfg["unfreeze_every"], cfg["unfreeze_unit"])])
