"""How training runs on the hardware (params `compute`): the number format and the memory knobs, as the Trainer
takes them. The pretrain, finetune and peft stages all train through these arguments.

On a CPU the defaults train in fp32 with every activation kept, the linear layers' matmuls in oneDNN (cpu_matmul)
and dropout's masks drawn four to a random number (cpu_dropout), freed memory kept for reuse (cpu_allocator);
on a GPU `precision: auto` trains in bf16 where the GPU has it and in fp16 with loss scaling where it has not, and
lets fp32 matmuls run as TF32 from Ampere on."""
import contextlib
import os

import torch

from transfer.schema import UserError
from transfer.training import cpu_allocator as allocator
from transfer.training import cpu_dropout as dropout
from transfer.training import cpu_matmul as onednn

TF32_FROM_CAPABILITY = 8  # Ampere (A100, RTX 30xx) and later have TF32 tensor cores


def precision(setting):
    """params compute.precision made concrete for the machine this runs on: bf16, fp16 or fp32.

    Refuses (UserError) a format the machine cannot train in, so a stage can check it before touching anything."""
    cuda = torch.cuda.is_available()
    if setting == "auto":
        if not cuda:
            return "fp32"  # bf16 autocast on a CPU without bf16 instructions is slower than fp32
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    if setting == "fp16" and not cuda:
        raise UserError("params.yaml: compute.precision is fp16, which needs a GPU (CUDA) and none is visible here. "
                        "Use auto (fp32 on a CPU) or bf16 (autocast on the CPU: fast only where it has bf16 "
                        "instructions).")
    # by default torch counts bf16 emulated in fp32 (a V100, a T4) as supported: slower than fp16, and no tensor cores
    if setting == "bf16" and cuda and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise UserError(f"params.yaml: compute.precision is bf16, which this GPU ({torch.cuda.get_device_name()}) "
                        "cannot run: it came before Ampere. Use auto or fp16, which trains with loss scaling.")
    return setting


def cpu_matmul(setting):
    """params compute.cpu_matmul made concrete for this machine: onednn or native (PyTorch's own, MKL on x86).

    auto takes oneDNN where this PyTorch has it, no GPU is visible and the CPU has AVX-512: there MKL's GEMM ran at
    less than half oneDNN's speed (an AMD EPYC), where on an AVX2-only EPYC oneDNN was the slower one (a training step
    0.83x, python -m bench.cpu_matmul). Asked for where this PyTorch has no oneDNN linear, refused."""
    if setting == "auto":
        avx512 = torch.backends.cpu.get_cpu_capability().startswith("AVX512")
        return "onednn" if avx512 and not torch.cuda.is_available() and onednn.available() else "native"
    if setting == "onednn" and not onednn.available():
        raise UserError("params.yaml: compute.cpu_matmul is onednn, but this PyTorch build has no oneDNN linear "
                        "(torch.backends.mkldnn). Use auto or native.")
    return setting


def cpu_dropout(setting):
    """params compute.cpu_dropout made concrete: fast (transfer/training/cpu_dropout.py) or native.

    auto takes fast where no GPU is visible; on a GPU dropout is PyTorch's, whatever the setting."""
    if setting == "auto":
        return "native" if torch.cuda.is_available() else "fast"
    return setting


def cpu_allocator(setting):
    """params compute.cpu_allocator made concrete for this machine: keep (transfer/training/cpu_allocator.py) or
    native. auto takes keep where the C library is glibc and no GPU is visible; asked for elsewhere, refused."""
    if setting == "auto":
        return "keep" if not torch.cuda.is_available() and allocator.available() else "native"
    if setting == "keep" and not allocator.available():
        raise UserError("params.yaml: compute.cpu_allocator is keep, which sets glibc's malloc, and this process's C "
                        "library is not glibc. Use auto or native.")
    return setting


def cpu_kernels(compute):
    """The context that training and prediction run in: on a CPU in fp32, the linear layers in oneDNN where params
    compute.cpu_matmul chooses it (transfer/training/cpu_matmul.py) and dropout's cheaper masks where
    compute.cpu_dropout does (cpu_dropout.py). Under bf16 or fp16 nothing changes, nor with gradient checkpointing:
    its recomputation runs inside the backward pass, which a TorchFunctionMode does not reach, so the layers
    recomputed would not be the ones that ran (other saved tensors, other dropout masks). Freed memory is kept for
    reuse where compute.cpu_allocator chooses it (cpu_allocator.py), in every precision."""
    plain = precision(compute["precision"]) == "fp32" and not compute["gradient_checkpointing"]
    stack = contextlib.ExitStack()
    stack.enter_context(onednn.onednn_linear(plain and cpu_matmul(compute["cpu_matmul"]) == "onednn"))
    stack.enter_context(dropout.fast_dropout(plain and cpu_dropout(compute["cpu_dropout"]) == "fast"))
    stack.enter_context(allocator.keep_freed_memory(cpu_allocator(compute["cpu_allocator"]) == "keep"))
    return stack


def check(params, config=None):
    """The early check of params 'compute' and 'launcher' against this machine and, given its config, the model."""
    from transfer.training import launcher

    precision(params["compute"]["precision"])
    cpu_matmul(params["compute"]["cpu_matmul"])
    cpu_allocator(params["compute"]["cpu_allocator"])
    launcher.check(params)
    if config is not None and params["compute"]["gradient_checkpointing"]:
        from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

        model_class = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING.get(type(config))
        if model_class is not None and not model_class.supports_gradient_checkpointing:
            raise UserError(f"params.yaml: compute.gradient_checkpointing is true, but a {config.model_type!r} "
                            "model does not support it in transformers. Set it to false (and lower "
                            "train.batch_size, raising train.gradient_accumulation_steps, to save memory).")


def across_processes(loss, trainer, num_items_in_batch):
    """A loss divided by the step's num_items_in_batch, which counts the rows (or tokens) of every process, made the
    share of this process: DDP averages the processes' gradients, so together they give the whole step's mean."""
    if num_items_in_batch is not None and trainer.args.average_tokens_across_devices and trainer.args.n_gpu <= 1:
        return loss * trainer.accelerator.num_processes
    return loss


def training_arguments(compute):
    """The TrainingArguments keywords for params' compute section."""
    chosen = precision(compute["precision"])
    if chosen == "fp32":
        # TrainingArguments(bf16=True) leaves ACCELERATE_MIXED_PRECISION=bf16 in the environment and no later one
        # clears it: a fp32 run after a bf16 one in the same process would train in bf16
        os.environ["ACCELERATE_MIXED_PRECISION"] = "no"
    cuda = torch.cuda.is_available()
    tf32 = cuda and chosen != "fp32" and torch.cuda.get_device_capability()[0] >= TF32_FROM_CAPABILITY
    checkpointing = compute["gradient_checkpointing"]
    return {
        "bf16": chosen == "bf16", "fp16": chosen == "fp16", "use_cpu": not cuda,
        "tf32": True if tf32 else None,  # None leaves PyTorch's own setting alone (fp32 asked for: no TF32)
        "gradient_checkpointing": checkpointing,
        # non-reentrant: the frozen embeddings of a LoRA or adapter model need no grad for the layers to get one
        "gradient_checkpointing_kwargs": {"use_reentrant": False} if checkpointing else None,
    }


def fp32_again(model):
    """`model`, and PyTorch's matmuls, in fp32 again after the Trainer trained in bf16 or fp16, so that what runs the
    model after training (the held-out loss or perplexity after, compress's fp32 test figures and latency) runs as
    what ran before it did. accelerate's prepare_model wraps model.forward in autocast and the Trainer never takes the
    wrapper off: the model gets its own forward back. TrainingArguments(tf32=True) switches fp32 matmuls to TF32 for
    the whole process on an Ampere or later GPU: PyTorch's default (no TF32 in matmuls) is set back. Returns `model`."""
    original = model.__dict__.pop("_original_forward", None)
    if original is not None:
        if getattr(original, "__func__", None) is type(model).forward:
            del model.forward  # the class's forward, as before the Trainer
        else:
            model.forward = original
    torch.backends.cuda.matmul.allow_tf32 = False
    return model
