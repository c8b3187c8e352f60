"""PyTorch's own fp32 linear (MKL on x86) against oneDNN's (params compute.cpu_matmul), side by side in one run on
this CPU: the GEMMs at MiniLM's shapes, one fine-tuning step, one prediction batch.

    python -m bench.cpu_matmul                  # writes bench/results/cpu_matmul.json and bench/cpu_matmul.md

GEMMs: F.linear forward at a training batch's rows (16 x 128 tokens) and a prediction batch's (64 x 128), median
of torch.utils.benchmark's blocked runs. Training step: a MiniLM-shaped BERT (random weights, its 0.1 dropouts),
forward + backward + fused AdamW at batch 16 x 128, the median of --steps steps, the two set-ups interleaved
--repeats times so that a load on the machine hits both. Prediction: the same model in eval mode, batch 64 x 128.
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.inference import cpu, on_this_cpu, timed
from bench.train_step import model_and_optimizer, step_seconds
from transfer.training.cpu_matmul import available, onednn_linear

RESULTS = on_this_cpu(Path(__file__).resolve().parent / "results/cpu_matmul.json")
TABLE = on_this_cpu(Path(__file__).resolve().parent / "cpu_matmul.md")
SHAPES = {"attention projection 384 -> 384": (384, 384), "FFN up 384 -> 1536": (384, 1536),
          "FFN down 1536 -> 384": (1536, 384)}
KERNELS = {"native": False, "onednn": True}


def gemms(seconds):
    rows = []
    for tokens in (16 * 128, 64 * 128):
        for name, (k, n) in SHAPES.items():
            x, weight = torch.randn(tokens, k), torch.randn(n, k)
            row = {"shape": name, "rows": tokens}
            for kernel, enabled in KERNELS.items():
                with onednn_linear(enabled):
                    median = timed(lambda: F.linear(x, weight), seconds)["median_ms"]
                row[f"{kernel}_ms"] = median
                row[f"{kernel}_gflops"] = round(2 * tokens * k * n / median / 1e6, 1)
            row["speedup"] = round(row["native_ms"] / row["onednn_ms"], 2)
            rows.append(row)
    return rows


def training_steps(steps, repeats):
    model, optimizer = model_and_optimizer("sdpa", 0.1)
    medians = {kernel: [] for kernel in KERNELS}
    for _ in range(repeats):
        for kernel, enabled in KERNELS.items():
            with onednn_linear(enabled):
                step_seconds(model, optimizer, 128)  # warm-up
                medians[kernel].append(statistics.median(step_seconds(model, optimizer, 128) for _ in range(steps)))
    return medians


def prediction_batches(seconds):
    model = model_and_optimizer("sdpa", 0.1)[0].eval()
    ids = torch.randint(1000, 30000, (64, 128))
    result = {}
    for kernel, enabled in KERNELS.items():
        with torch.inference_mode(), onednn_linear(enabled):
            result[kernel] = timed(lambda: model(input_ids=ids), seconds)
    return result


def markdown(result):
    machine = result["cpu"]
    lines = [f"{machine['name']} ({machine['machine']}, AVX-512 VNNI: {'yes' if machine['avx512_vnni'] else 'no'}), "
             f"{machine['threads']} threads, torch {result['torch']}; `python -m bench.cpu_matmul`.", "",
             "| F.linear forward | rows | native ms (GFLOP/s) | oneDNN ms (GFLOP/s) | oneDNN speed-up |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['shape']} | {r['rows']} | {r['native_ms']} ({r['native_gflops']}) | {r['onednn_ms']} "
              f"({r['onednn_gflops']}) | {r['speedup']}x |" for r in result["gemm"]]
    step, predict = result["training_step"], result["prediction_batch"]
    lines += ["", "| MiniLM-shaped BERT | native | oneDNN | oneDNN speed-up |", "|---|---:|---:|---:|",
              f"| training step, batch 16 x 128, median s (repeats) | {step['native_median_s']} "
              f"({', '.join(map(str, step['native_s']))}) | {step['onednn_median_s']} "
              f"({', '.join(map(str, step['onednn_s']))}) | {step['speedup']}x |",
              f"| prediction, batch 64 x 128, median ms (IQR) | {predict['native']['median_ms']} "
              f"({predict['native']['iqr_ms']}) | {predict['onednn']['median_ms']} ({predict['onednn']['iqr_ms']}) "
              f"| {predict['speedup']}x |"]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per GEMM and prediction set-up")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not available():
        raise SystemExit("this PyTorch has no oneDNN linear: compute.cpu_matmul can only be native here")
    started = time.perf_counter()
    steps = training_steps(args.steps, args.repeats)
    step = {f"{k}_s": [round(v, 3) for v in values] for k, values in steps.items()}
    step.update({f"{k}_median_s": round(statistics.median(values), 3) for k, values in steps.items()})
    step["speedup"] = round(step["native_median_s"] / step["onednn_median_s"], 2)
    predict = prediction_batches(args.seconds)
    predict["speedup"] = round(predict["native"]["median_ms"] / predict["onednn"]["median_ms"], 2)
    result = {"cpu": cpu(), "torch": torch.__version__, "gemm": gemms(args.seconds), "training_step": step,
              "prediction_batch": predict, "training_step_speedup": step["speedup"],
              "prediction_speedup": predict["speedup"], "bench_seconds": round(time.perf_counter() - started)}
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    TABLE.write_text(markdown(result))
    print(TABLE.read_text())


if __name__ == "__main__":
    main()
