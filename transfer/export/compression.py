"""Smaller models from the full fine-tune (params compress): a student with fewer layers distilled from it, and
the fine-tune itself with its smallest weights pruned to zero. Both train on the teacher's soft labels.

Written by hand where the libraries have no recipe for a saved HF classifier: picking the student's layers,
and the distillation loss (Hinton et al. 2015: KL divergence of the temperature-softened outputs, times T^2,
mixed with the usual cross-entropy). Pruning is torch.nn.utils.prune's global L1 magnitude pruning."""
import copy

import torch
import torch.nn.functional as F
from torch.nn.utils import prune

from transfer.schema import UserError
from transfer.strategies._layerwise import encoder_layers
from transfer.training.classifier import ResumableTrainer


def kept_layers(total, keep):
    """Indices of `keep` of `total` layers, evenly spaced and ending with the top one (6 -> 3 keeps 1, 3, 5):
    each kept layer stands for the ones below it down to the previous kept one."""
    if not 1 <= keep < total:
        raise UserError(f"params.yaml: compress.student_layers is {keep}; the fine-tuned model has {total} layers, "
                        f"so the student must keep between 1 and {total - 1} of them.")
    return [round((i + 1) * total / keep) - 1 for i in range(keep)]


def _parent_of(model, child):
    for module in model.modules():
        for name, candidate in module.named_children():
            if candidate is child:
                return module, name
    raise ValueError("the layer list is not part of the model")


def student_from(teacher, keep):
    """A copy of `teacher` that keeps `keep` of its encoder layers (kept_layers): the same embeddings, pooling and
    head, each kept layer with the teacher's weights. Its config says its depth, so it saves and loads as any model."""
    student = copy.deepcopy(teacher).requires_grad_(True)  # the teacher is frozen once it has taught
    layers = encoder_layers(student)
    chosen = kept_layers(len(layers), keep)
    parent, name = _parent_of(student, layers)
    setattr(parent, name, torch.nn.ModuleList([layers[i] for i in chosen]))
    student.config.num_hidden_layers = keep  # the attribute map turns it into n_layers etc. where a model calls it so
    return student, chosen


def prunable_weights(model):
    """The weight matrices of the encoder layers' linear maps: most of the parameters and all of the matmul work.
    Embeddings, norms, biases and the classification head stay dense."""
    return [(module, "weight") for layer in encoder_layers(model) for module in layer.modules()
            if isinstance(module, torch.nn.Linear)]


def pruned_copy(teacher, sparsity):
    """A copy of `teacher` with the `sparsity` share of prunable_weights zeroed, smallest magnitude first, over all
    of them at once (layers that matter less lose more). The zeros are held by masks while the copy trains on;
    make_permanent drops the masks."""
    model = copy.deepcopy(teacher).requires_grad_(True)
    prune.global_unstructured(prunable_weights(model), pruning_method=prune.L1Unstructured, amount=sparsity)
    return model


def make_permanent(model):
    for module, name in prunable_weights(model):
        if prune.is_pruned(module):
            prune.remove(module, name)
    return model


def zero_share(model):
    """The share of prunable_weights that are exactly zero."""
    weights = [getattr(module, name) for module, name in prunable_weights(model)]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def distillation_loss(student_logits, teacher_logits, labels, temperature, alpha, class_weights=None):
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * cross-entropy with the true labels. T^2 keeps the
    soft term's gradients on the scale of the hard one's whatever the temperature."""
    student_logits, teacher_logits = student_logits.float(), teacher_logits.float()
    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=-1),
                    F.softmax(teacher_logits / temperature, dim=-1), reduction="batchmean") * temperature ** 2
    hard = F.cross_entropy(student_logits, labels,
                           weight=None if class_weights is None else class_weights.to(student_logits.device))
    return alpha * soft + (1 - alpha) * hard


class DistillingTrainer(ResumableTrainer):
    """The pipeline's Trainer with the distillation loss: the teacher sees every training batch too, under the
    same autocast as the student (on a GPU, bf16 or fp16), and never trains."""

    def __init__(self, *args, teacher, temperature, alpha, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = teacher.eval().requires_grad_(False)
        self.temperature, self.alpha = temperature, alpha
        self.model_accepts_loss_kwargs = False  # a mean per batch: the Trainer divides by the accumulated batches

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        self.teacher.to(outputs.logits.device)
        with torch.no_grad(), self.accelerator.autocast():
            teacher_logits = self.teacher(**inputs).logits
        loss = distillation_loss(outputs.logits, teacher_logits, labels, self.temperature, self.alpha,
                                 self.class_weights)
        return (loss, outputs) if return_outputs else loss


def drop_warnings(name, drop, limit):
    """A warning when the compressed model `name` lost more test macro-F1 than params compress.max_f1_drop."""
    if drop <= limit:
        return []
    fix = ("keep more layers (compress.student_layers) or train longer (compress.epochs)" if name == "distilled"
           else "prune less (compress.sparsity) or train longer (compress.prune_epochs)")
    return [{"kind": "compression_drop", "model": name, "macro_f1_drop": round(drop, 4), "max_f1_drop": limit,
             "message": f"the {name} model's test macro-F1 is {drop:.4f} below the full fine-tune's, more than "
                        f"compress.max_f1_drop={limit}: {fix}."}]
