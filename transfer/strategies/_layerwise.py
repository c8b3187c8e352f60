"""What the libraries lack: layer depths, layer-wise learning-rate decay, and ULMFiT-style gradual unfreezing.

Depth counts from the top: the top encoder layer (and whatever sits above the layers in the backbone, such as
BERT's pooler) is depth 0, the bottom layer is depth L-1, and the embeddings (whatever comes before the first
layer) are depth L. The classification head has no depth: it always trains, at its own learning rate.
"""
import torch
from transformers import TrainerCallback

from transfer.schema import UserError


def encoder_layers(model):
    """The transformer blocks of the backbone, bottom first: the longest ModuleList inside base_model."""
    lists = [m for m in model.base_model.modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise UserError(f"{type(model).__name__} has no list of transformer layers, which strategies partial, "
                        "gradual and llrd need; use strategy lora or frozen for this model.")
    return max(lists, key=len)


def head_parameters(model):
    base = {id(p) for p in model.base_model.parameters()}
    return [p for p in model.parameters() if id(p) not in base]


def freeze_all_but(model, trainable):
    keep = {id(p) for p in trainable}
    for parameter in model.parameters():
        parameter.requires_grad = id(parameter) in keep


def parameter_depths(model):
    """{id(parameter): depth} for the backbone; head parameters are left out."""
    layers = encoder_layers(model)
    in_layer = {id(p): len(layers) - 1 - index for index, layer in enumerate(layers) for p in layer.parameters()}
    first_layer = id(next(layers[0].parameters()))
    head = {id(p) for p in head_parameters(model)}
    depths, below = {}, True
    for parameter in model.parameters():
        if id(parameter) == first_layer:
            below = False
        if id(parameter) not in head:
            depths[id(parameter)] = in_layer.get(id(parameter), len(layers) if below else 0)
    return depths


def layerwise_groups(model, learning_rate, decay, head_learning_rate, weight_decay, only_trainable=True):
    """Optimizer groups with lr x decay^depth and the head at head_learning_rate; no weight decay on
    biases and LayerNorm weights. only_trainable=False also groups frozen parameters (gradual unfreezing
    builds the optimizer once, then lets frozen ones join as they thaw)."""
    depths = parameter_depths(model)
    groups = {}
    for parameter in model.parameters():
        if only_trainable and not parameter.requires_grad:
            continue
        depth = depths.get(id(parameter))
        key, lr = ("head", head_learning_rate) if depth is None else (f"depth{depth}", learning_rate * decay ** depth)
        no_decay = parameter.ndim < 2
        group = groups.setdefault((key, no_decay), {"params": [], "lr": lr, "name": key,
                                                   "weight_decay": 0.0 if no_decay else weight_decay})
        group["params"].append(parameter)
    return list(groups.values())


def unfreeze_to_depth(model, depths, stage):
    """Stage 0 trains the head only; stage s also trains depths 0..s-1."""
    for parameter in model.parameters():
        depth = depths.get(id(parameter))
        parameter.requires_grad = depth is None or depth < stage


class GradualUnfreezing(TrainerCallback):
    """Unfreeze one more block from the top every `every` epochs or optimizer steps; the embeddings come last.

    Frozen parameters get no gradient, so AdamW leaves them (and their weight decay) untouched until they thaw."""

    def __init__(self, model, every, unit):
        self.model, self.every, self.unit = model, every, unit
        self.depths = parameter_depths(model)  # once: the step hook only flips requires_grad
        self.layer_count = len(encoder_layers(model))
        self._update(0)

    def _update(self, progress):
        stage = int(progress // self.every)
        unfreeze_to_depth(self.model, self.depths, stage)
        self.unfrozen_layers = min(stage, self.layer_count)

    def on_step_begin(self, args, state, control, **kwargs):
        if self.unit == "steps":
            self._update(state.global_step)

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self.unit == "epochs":
            self._update(round(state.epoch or 0))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None:
            logs["unfrozen_layers"] = self.unfrozen_layers
