"""One fine-tuning step of a MiniLM-shaped BERT (6 layers, hidden 384, batch 16 x 128 tokens), timed set-up by set-up
in one run: what attention dropout, the attention implementation, the CPU kernels (compute.cpu_matmul,
compute.cpu_dropout) and torch.compile cost on this machine.

    python -m bench.train_step                 # SDPA and eager attention, dropout's masks, oneDNN or MKL linear
    python -m bench.train_step --length 52     # the same at IMDB's first two sentences' length
    python -m bench.train_step --compile       # ... and torch.compile'd (inductor): first steps and the steady one

A random-weight model (speed does not depend on the weights), AdamW fused, forward + backward + step. Each set-up's
median step over --steps steps after one warm-up, --repeats times, set-ups interleaved so that a load on the
machine hits them all; torch.compile reports its first step (the compile), the first at a new padded length (a
recompile) and its steady median. Writes bench/results/train_step.json (train_step_avx2.json, or _avx512, on a CPU
without AVX-512 VNNI); README.md's "Attention dropout" quotes it.
"""
import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification

from bench.inference import cpu, on_this_cpu
from transfer.training import compute

RESULTS = Path(__file__).resolve().parent / "results"


def model_and_optimizer(implementation, attention_dropout):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=1536, num_labels=2, attention_probs_dropout_prob=attention_dropout,
                        attn_implementation=implementation)
    model = BertForSequenceClassification(config).train()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)


def step_seconds(model, optimizer, length, batch=16):
    ids = torch.randint(1000, 30000, (batch, length))
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[: batch // 4, length - 20:] = 0  # some padding, as length-grouped batches have
    started = time.perf_counter()
    model(input_ids=ids, attention_mask=mask, labels=torch.randint(0, 2, (batch,))).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return time.perf_counter() - started


def median_step(model, optimizer, steps, length=128):
    step_seconds(model, optimizer, length)  # warm-up
    return statistics.median(step_seconds(model, optimizer, length) for _ in range(steps))


def kernels(linear, masks):
    """The context a set-up trains in, as the stages get it from compute.cpu_kernels: linear 'onednn' or 'mkl'
    (PyTorch's own), dropout masks 'fast' or 'native'."""
    return compute.cpu_kernels({"precision": "fp32", "gradient_checkpointing": False,
                                "cpu_matmul": "onednn" if linear == "onednn" else "native", "cpu_dropout": masks,
                                "cpu_allocator": "native"})


SETUPS = {  # name: (attention implementation, attention dropout, linear kernels, dropout masks)
    "sdpa, attention dropout 0.1, MKL linear, native masks": ("sdpa", 0.1, "mkl", "native"),
    "sdpa, attention dropout 0.1, MKL linear, fast masks": ("sdpa", 0.1, "mkl", "fast"),  # auto without AVX-512
    "sdpa, attention dropout 0.1, oneDNN linear, native masks": ("sdpa", 0.1, "onednn", "native"),
    "sdpa, attention dropout 0.1, oneDNN linear, fast masks": ("sdpa", 0.1, "onednn", "fast"),
    "eager, attention dropout 0.1, oneDNN linear, fast masks": ("eager", 0.1, "onednn", "fast"),
    "sdpa, attention dropout 0.0, oneDNN linear, fast masks": ("sdpa", 0.0, "onednn", "fast"),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--length", type=int, default=128, help="tokens per text (batch 16)")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    medians = {name: [] for name in SETUPS}
    for _ in range(args.repeats):
        for name, (implementation, dropout, linear, masks) in SETUPS.items():
            with kernels(linear, masks):
                step = median_step(*model_and_optimizer(implementation, dropout), args.steps, args.length)
            medians[name].append(round(step, 3))
    best = {name: min(values) for name, values in medians.items()}
    reference = best["sdpa, attention dropout 0.1, oneDNN linear, native masks"]
    result = {"cpu": cpu(), "torch": torch.__version__, "threads": torch.get_num_threads(), "length": args.length,
              "median_step_seconds": medians,
              "speedup_over_onednn_native_masks": {name: round(reference / b, 2) for name, b in best.items()}}
    if args.compile:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp()  # compiled cold, as a user's first run is
        model, optimizer = model_and_optimizer("sdpa", 0.1)
        model.forward = torch.compile(model.forward)
        result["compiled_sdpa_0.1"] = {
            "first_step_seconds": round(step_seconds(model, optimizer, 128), 1),
            "first_step_at_length_120_seconds": round(step_seconds(model, optimizer, 120), 1),
            "median_step_seconds": round(median_step(model, optimizer, args.steps), 3)}
    path = on_this_cpu(RESULTS / ("train_step.json" if args.length == 128 else f"train_step_{args.length}.json"))
    if not args.compile and path.exists():  # an earlier --compile run's figures stay, marked as such
        earlier = json.loads(path.read_text())
        compiled = earlier.get("compiled_sdpa_0.1_earlier_run") or (
            {**earlier["compiled_sdpa_0.1"], "note": "MKL linear, native masks: measured by an earlier run"}
            if "compiled_sdpa_0.1" in earlier else None)
        if compiled:
            result["compiled_sdpa_0.1_earlier_run"] = compiled
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(path.read_text())


if __name__ == "__main__":
    main()
