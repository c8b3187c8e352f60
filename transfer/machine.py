"""The machine a stage ran on, in words: written beside its seconds and latencies (metrics/timing/*.json), since
timings compare only on the same hardware. `dvc metrics diff` and `dvc exp show` then show a change of machine beside
the change of seconds it explains."""
import os
import platform
import sys
from pathlib import Path


def cpu_info():
    info = Path("/proc/cpuinfo")
    return info.read_text().splitlines() if info.exists() else []


def cpu_field(key):
    """The value of /proc/cpuinfo's first line named `key` (the whole name: "model" is not "model name"), else None."""
    return next((value.strip() for name, _, value in (line.partition(":") for line in cpu_info())
                 if name.strip() == key), None)


def cpu_name():
    name = cpu_field("model name")
    return platform.processor() if name is None else name


def cpu_model():
    """'family 23 model 1': which generation of x86 CPU this is, where /proc/cpuinfo says (else None). A virtual
    machine's CPU is often named "AMD EPYC" alone, a name two EPYC generations here shared although PyTorch's fp32
    GEMM at the model's FFN shape ran at 69 GFLOP/s on the older and 175 on the other (bench/inference*.md)."""
    family, model = cpu_field("cpu family"), cpu_field("model")
    return None if family is None or model is None else f"family {family} model {model}"


def cpu_flags():
    return set((cpu_field("flags") or "").split())


def cpu_kind(flags):
    """The widest vector instructions of this CPU that the kernels care about: the int8 model ran 4.1x PyTorch fp32
    on an EPYC with VNNI, 1.6x on one with AVX2 alone (bench/inference.md); AVX-512 widens the fp32 matmuls."""
    if "avx512_vnni" in flags:
        return "AVX-512 VNNI"
    if "avx512f" in flags:
        return "AVX-512"
    if "avx2" in flags:
        return "AVX2"
    return platform.machine() or "unknown"


def describe():
    """e.g. 'AMD EPYC 7B13 (AVX2, 2 cores)', or with the GPUs a training process sees before it: 'NVIDIA H100 80GB
    HBM3, AMD EPYC (family 25 model 17, AVX-512 VNNI, 16 cores)'. A CPU name without a model number gets the x86
    family and model, so that two generations under one name read apart. The GPUs are looked up only where the
    stage has imported torch."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    name, generation = cpu_name() or "CPU", cpu_model()
    details = [generation] if generation and not any(c.isdigit() for c in name) else []
    described = f"{name} ({', '.join([*details, cpu_kind(cpu_flags())])}, {cores} cores)"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        count = torch.cuda.device_count()
        described = f"{torch.cuda.get_device_name()}{f' x{count}' if count > 1 else ''}, {described}"
    return described
