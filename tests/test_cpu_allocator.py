"""Freed memory kept for reuse on a CPU (transfer/training/cpu_allocator.py, params compute.cpu_allocator): no fresh
pages for a block allocated again, glibc's defaults back on leaving, the same numbers either way."""
import ast
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from transfer.schema import UserError
from transfer.training import compute, cpu_allocator
from transfer.training.cpu_allocator import keep_freed_memory

pytestmark = pytest.mark.skipif(not cpu_allocator.available(), reason="the C library is not glibc")

BLOCK = 64 * 2**20  # above glibc's largest mmap threshold (32 MiB): by default mapped afresh every time
PAGES = BLOCK // resource.getpagesize()

FAULTS_PER_ALLOCATION = f"""
import resource, sys, torch
from transfer.training.cpu_allocator import keep_freed_memory
faults = []
with keep_freed_memory(enabled=sys.argv[1] == "keep"):
    for _ in range(16):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.zeros({BLOCK // 4})  # written all through, then freed
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(faults)
"""


def faults_per_allocation(setting):
    """Page faults of each of 16 allocations of the block, in a fresh process (the allocator's state is the
    process's)."""
    run = subprocess.run([sys.executable, "-c", FAULTS_PER_ALLOCATION, setting], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], check=True)
    return ast.literal_eval(run.stdout.strip().splitlines()[-1])


def test_a_freed_block_is_reused_when_kept_and_mapped_afresh_otherwise():
    kept, native = faults_per_allocation("keep"), faults_per_allocation("native")
    assert min(native) > 0.9 * PAGES  # glibc's default: mmap, fault every page in, unmap, every time
    # the first few may take fresh pages while the freed pieces gather into a block big enough (alignment)
    assert max(kept[-4:]) < 0.05 * PAGES


class RecordingLibc:
    def __init__(self):
        self.calls = []

    def mallopt(self, parameter, value):
        self.calls.append(("mallopt", parameter, value))
        return 1

    def malloc_trim(self, pad):
        self.calls.append(("malloc_trim", pad))
        return 1


def test_the_settings_go_in_once_and_glibcs_defaults_come_back_on_leaving(monkeypatch):
    libc = RecordingLibc()
    monkeypatch.setattr(cpu_allocator, "_glibc", lambda: libc)
    with keep_freed_memory():
        with keep_freed_memory():  # nested (prediction inside a training run): nothing set or restored
            pass
        assert libc.calls == [("mallopt", cpu_allocator.M_MMAP_MAX, 0),
                              ("mallopt", cpu_allocator.M_TRIM_THRESHOLD, cpu_allocator.KEEP_EVERYTHING)]
    assert libc.calls[2:] == [("mallopt", cpu_allocator.M_MMAP_MAX, 65536),
                              ("mallopt", cpu_allocator.M_TRIM_THRESHOLD, 128 * 1024), ("malloc_trim", 0)]
    with pytest.raises(RuntimeError), keep_freed_memory():  # restored after an error too
        raise RuntimeError
    assert libc.calls[-1] == ("malloc_trim", 0) and len(libc.calls) == 10
    with keep_freed_memory(enabled=False):
        pass
    assert len(libc.calls) == 10


def tiny_training(allocator):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, num_labels=2)
    model = BertForSequenceClassification(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    settings = {"precision": "fp32", "gradient_checkpointing": False, "cpu_matmul": "native",
                "cpu_dropout": "native", "cpu_allocator": allocator}
    losses = []
    with compute.cpu_kernels(settings):
        for _ in range(8):
            ids = torch.randint(5, 300, (8, 16))
            loss = model(input_ids=ids, labels=ids[:, 0] % 2).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
    return losses, model.state_dict()


def test_training_gives_the_same_numbers_with_either_allocator():
    kept_losses, kept_weights = tiny_training("keep")
    native_losses, native_weights = tiny_training("native")
    assert kept_losses == native_losses and kept_losses[-1] < kept_losses[0]
    assert all(torch.equal(kept_weights[name], native_weights[name]) for name in native_weights)


def test_the_kernels_context_keeps_memory_as_the_setting_says(monkeypatch):
    entered = []
    real = cpu_allocator.keep_freed_memory
    monkeypatch.setattr(cpu_allocator, "keep_freed_memory", lambda enabled: entered.append(enabled) or real(enabled))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for setting in ("auto", "keep", "native"):
        with compute.cpu_kernels({"precision": "bf16", "gradient_checkpointing": True, "cpu_matmul": "native",
                                  "cpu_dropout": "native", "cpu_allocator": setting}):
            pass
    assert entered == [True, True, False]  # in any precision, with checkpointing too


def test_auto_keeps_on_a_cpu_with_glibc_and_keep_is_refused_without(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert compute.cpu_allocator("auto") == "keep" and compute.cpu_allocator("native") == "native"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert compute.cpu_allocator("auto") == "native"
    monkeypatch.setattr(cpu_allocator, "_glibc", lambda: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert compute.cpu_allocator("auto") == "native"
    with pytest.raises(UserError, match=r"compute.cpu_allocator is keep.*not glibc. Use auto or native"):
        compute.cpu_allocator("keep")
