"""Partial fine-tuning: the top `top_layers` encoder layers and the head train; the layers below stay frozen."""
from transfer.schema import LEARNING_RATE, POSITIVE_INT, UserError
from transfer.strategies import Plan

PARAMS = {"learning_rate": LEARNING_RATE, "top_layers": POSITIVE_INT}


def _too_many(top, layers):
    return UserError(f"partial.top_layers is {top} but the model has only {layers} encoder layers; "
                     f"choose 1 to {layers}.")


def _layer_count(config):
    for key in ("num_hidden_layers", "n_layers", "n_layer", "num_layers"):
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    return None


def check(params, config):
    layers, top = _layer_count(config), params["partial"]["top_layers"]
    if layers and top > layers:
        raise _too_many(top, layers)


def build(model, params, **_):
    from transfer.strategies._layerwise import encoder_layers, freeze_all_but, head_parameters

    layers = encoder_layers(model)
    top = params["partial"]["top_layers"]
    if top > len(layers):
        raise _too_many(top, len(layers))
    trainable = head_parameters(model) + [p for layer in layers[len(layers) - top:] for p in layer.parameters()]
    freeze_all_but(model, trainable)
    return Plan(model)
