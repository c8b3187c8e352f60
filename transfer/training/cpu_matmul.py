"""fp32 linear layers through oneDNN on a CPU (params compute.cpu_matmul), in training and in prediction.

PyTorch's x86 builds run an fp32 `F.linear` through MKL's GEMM, which on AMD EPYC CPUs takes a slower code path:
measured at MiniLM's FFN shape on 2 threads, MKL ran at 230 GFLOP/s where oneDNN, which PyTorch also ships, ran at
511 (`python -m bench.cpu_matmul`). oneDNN is what PyTorch already uses for bf16 on a CPU; for fp32 nothing in
PyTorch asks for it, so this routes each fp32 `F.linear` on a CPU (every nn.Linear: the encoder, LoRA's and the
adapters' layers, the heads) to oneDNN's matmul, forward and backward, while `with onednn_linear():` is open.

Everything else stays PyTorch's: under an autocast (bf16 on a CPU) or on a GPU a linear takes PyTorch's own path.
A TorchFunctionMode does not reach into the backward pass (Tensor.backward runs with the mode set aside), which
is why the backward's matmuls are OneDNNLinear's own and why gradient checkpointing, whose recomputation runs
there, keeps PyTorch's linear (transfer/training/compute.py)."""
import contextlib

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


def available():
    """Whether this PyTorch has oneDNN's fp32 linear (its x86 builds have; some ARM and custom builds have not)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def matmul_transposed(x, weight, bias=None):
    """x @ weight.T (+ bias) for 2-D x (rows, in) and weight (out, in), by oneDNN. Either may be a transposed
    view: oneDNN reads the strides, where a contiguous copy would cost a pass over memory (15% of a training step
    at 52 tokens when the backward pass copied its transposes)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class OneDNNLinear(torch.autograd.Function):
    """F.linear whose three matmuls (output, input gradient, weight gradient) run in oneDNN."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        rows = x.reshape(-1, x.shape[-1]).contiguous()
        weight = weight.contiguous()
        # each gradient needs the other operand only: a frozen weight (LoRA's, the adapters') keeps no input alive
        ctx.save_for_backward(rows if ctx.needs_input_grad[1] else None, weight if ctx.needs_input_grad[0] else None)
        ctx.input_shape, ctx.has_bias = x.shape, bias is not None
        return matmul_transposed(rows, weight, bias).reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_output):
        rows, weight = ctx.saved_tensors
        grad_rows = grad_output.reshape(-1, grad_output.shape[-1])
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:  # grad @ W
            grad_x = matmul_transposed(grad_rows, weight.t()).reshape(ctx.input_shape)
        if ctx.needs_input_grad[1]:  # grad.T @ x; a frozen weight (LoRA's, the adapters') skips this one
            grad_weight = matmul_transposed(grad_rows.t(), rows.t())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_rows.sum(0)
        return grad_x, grad_weight, grad_bias


class _OneDNNLinearMode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            named = dict(zip(("input", "weight", "bias"), args), **kwargs)
            x, weight, bias = named["input"], named["weight"], named.get("bias")
            if _fits(x, weight, bias):
                return OneDNNLinear.apply(x, weight, bias)
        return func(*args, **kwargs)


def _fits(x, weight, bias):
    tensors = [x, weight] + ([] if bias is None else [bias])
    return (all(t.device.type == "cpu" and t.dtype == torch.float32 and t.layout == torch.strided for t in tensors)
            and x.dim() >= 2 and weight.dim() == 2 and x.shape[-1] > 0 and x.numel() > 0
            and not torch.is_autocast_enabled("cpu"))


def onednn_linear(enabled=True):
    """A context in which every fp32 CPU F.linear runs in oneDNN; `enabled=False` gives a context that changes nothing."""
    return _OneDNNLinearMode() if enabled else contextlib.nullcontext()
