"""Dropout with a cheaper random mask on a CPU (params compute.cpu_dropout), in training.

PyTorch's CPU dropout draws one Bernoulli sample per element; on a BERT step at 128 tokens that is 30 million
draws, most of them for the attention probabilities (batch x heads x tokens x tokens, six layers). Here each draw
of PyTorch's generator, 64 random bits, makes four 16-bit numbers, and an element is kept where its number is
at or above p x 65536: the same Bernoulli(1 - p) mask to within 1/65536 of p (0.1 becomes 0.100006), from a
quarter of the draws. The kept elements are scaled by 1 / (1 - p), as PyTorch's dropout does.

While `with fast_dropout():` is open, every training-mode `F.dropout` (nn.Dropout) on a CPU fp32 tensor takes this
mask, and so does the attention-probability dropout of `F.scaled_dot_product_attention` (run there as its math
path: scores, softmax, the mask, the values). Evaluation, p = 0, GPUs, autocast (bf16) and causal or grouped
attention keep PyTorch's own. The masks come from PyTorch's seeded generator, so a run repeats, and a resumed one
continues, exactly. Like cpu_matmul's mode, this one does not reach into the backward pass: gradient
checkpointing's recomputation would draw PyTorch's masks, not these, so compute.py leaves it off there.
"""
import contextlib
import math

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

STEPS = 65536  # the 16-bit numbers a mask compares against p


def keep_mask(shape, p, device="cpu"):
    """A bool mask of `shape`, each element True with probability 1 - p (p rounded to 1/65536), from PyTorch's
    generator: one 64-bit draw per four elements."""
    count = math.prod(shape)
    draws = torch.empty((count + 3) // 4, dtype=torch.int64, device=device).random_(-2**63, 2**63 - 1)
    return (draws.view(torch.int16)[:count] >= -STEPS // 2 + round(p * STEPS)).view(shape)


class MaskedDropout(torch.autograd.Function):
    """x * mask / (1 - p), the mask from keep_mask; the backward scales the gradient by the same mask."""

    @staticmethod
    def forward(ctx, x, p):
        keep = keep_mask(x.shape, p, x.device)
        ctx.save_for_backward(keep)
        ctx.scale = 1.0 / (1.0 - p)
        return (x * keep).mul_(ctx.scale)

    @staticmethod
    def backward(ctx, grad_output):
        keep, = ctx.saved_tensors
        return (grad_output * keep).mul_(ctx.scale), None


ATTENTION_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")


def attention_with_dropout(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None):
    """scaled_dot_product_attention's math path, its attention probabilities dropped out by MaskedDropout."""
    scores = (query * (scale or 1.0 / math.sqrt(query.shape[-1]))) @ key.transpose(-2, -1)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    return MaskedDropout.apply(torch.softmax(scores, dim=-1), dropout_p) @ value


def _fits(*tensors):
    return (all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
            and not torch.is_autocast_enabled("cpu"))


class _FastDropoutMode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.dropout:
            named = dict(zip(("input", "p", "training", "inplace"), args), **kwargs)
            x, p = named["input"], named.get("p", 0.5)
            if named.get("training", True) and 0 < p < 1 and _fits(x):
                return MaskedDropout.apply(x, p)
        elif func is F.scaled_dot_product_attention:
            named = dict(zip(ATTENTION_ARGS, args), **kwargs)
            if (set(named) <= set(ATTENTION_ARGS) and 0 < named.get("dropout_p", 0.0) < 1
                    and not named.get("is_causal") and _fits(named["query"], named["key"], named["value"])):
                return attention_with_dropout(**named)
        return func(*args, **kwargs)


def fast_dropout(enabled=True):
    """A context in which CPU fp32 dropout takes keep_mask's masks; `enabled=False` changes nothing."""
    return _FastDropoutMode() if enabled else contextlib.nullcontext()
