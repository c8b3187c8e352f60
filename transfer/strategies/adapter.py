"""Bottleneck adapters (the adapters library): one after each layer's feed-forward block (Pfeiffer) or after both
blocks (Houlsby); the backbone stays frozen, the adapter and the classifier train."""
from transfer.schema import LEARNING_RATE, POSITIVE_INT, choice
from transfer.strategies import Plan

KINDS = ("pfeiffer", "houlsby")
PARAMS = {"learning_rate": LEARNING_RATE, "kind": choice(*KINDS), "reduction_factor": POSITIVE_INT}
MERGEABLE = False


def check(params, config):
    from transfer.strategies import _injection

    _injection.check_adapters_support("adapter", config.model_type)


def build(model, params, **_):
    import adapters

    from transfer.strategies import _injection

    adapters.init(model)
    model.add_adapter(_injection.TASK, config=_injection.bottleneck_config(params["adapter"]))
    model.train_adapter(_injection.TASK)  # freezes the backbone; a plain transformers classifier stays trainable
    return Plan(model)
