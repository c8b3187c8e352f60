"""The classifier's pooling, cls against mean, side by side in one run: test macro-F1 per strategy.

    python bench/pooling.py                                   # full fine-tune, lora, frozen; params.yaml's caps
    python bench/pooling.py --strategies frozen --max-train 500

Needs data/prepared and models/pretrained (`dvc repro pretrain`). Each run trains as the finetune or peft stage
would (bench/strategies.py's run_one: same params, seed, Trainer), once with params train.pooling: cls (the first
token through BERT's pooler layer, transformers' default) and once with mean (the average of the text's tokens,
what all-MiniLM-L6-v2 was trained for), and is scored on the test split. Writes bench/results/pooling.json and
bench/pooling.md.
"""
import argparse
import copy
import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.inference import cpu  # noqa: E402
from bench.strategies import FULL, PRETRAINED, run_one, total_train_seconds  # noqa: E402
from transfer import modeling  # noqa: E402
from transfer.config import load_params  # noqa: E402
from transfer.data import dataset  # noqa: E402

POOLINGS = ("cls", "mean")
KEPT = ("train_rows", "trainable_params", "epochs_run", "val_macro_f1", "test_macro_f1", "test_accuracy")


def table(results):
    lines = ["| strategy | cls: val / test macro-F1 | mean: val / test macro-F1 | test macro-F1 mean - cls | "
             "train s cls / mean |", "|---|---:|---:|---:|---:|"]
    for name, runs in results.items():
        cls, mean = runs["cls"], runs["mean"]
        lines.append(f"| {name} | {cls['val_macro_f1']:.4f} / {cls['test_macro_f1']:.4f} | "
                     f"{mean['val_macro_f1']:.4f} / {mean['test_macro_f1']:.4f} | "
                     f"{mean['test_macro_f1'] - cls['test_macro_f1']:+.4f} | "
                     f"{cls['train_seconds']:.0f} / {mean['train_seconds']:.0f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategies", default=f"{FULL},lora,frozen", help="comma-separated")
    parser.add_argument("--max-train", type=int, default=None, help="labelled training rows (default: all prepared)")
    args = parser.parse_args()
    params = load_params(ROOT / "params.yaml")
    parts, names = dataset.load_prepared(ROOT / "data/prepared")
    tokenizer = modeling.load_tokenizer(PRETRAINED)
    rows = args.max_train or len(parts["train"])
    command = f"python bench/{Path(__file__).name} {' '.join(sys.argv[1:])}".strip()
    results = {}
    for name in args.strategies.split(","):
        for setting in POOLINGS:
            run_params = copy.deepcopy(params)
            run_params["train"]["pooling"] = setting
            print(f"--- {name}, pooling {setting}, {rows} labels", flush=True)
            result = run_one(name, run_params, parts, names, tokenizer, rows)
            results.setdefault(name, {})[setting] = {**{key: result[key] for key in KEPT},
                                                     "train_seconds": round(total_train_seconds(result), 1)}
            print(json.dumps(results[name][setting]), flush=True)
    summary = {name: round(runs["mean"]["test_macro_f1"] - runs["cls"]["test_macro_f1"], 4)
               for name, runs in results.items() if len(runs) == 2}
    out = ROOT / "bench/results/pooling.json"
    out.write_text(json.dumps({"command": command, "machine": platform.machine(), "cpu": cpu(),
                               "torch_threads": torch.get_num_threads(), "test_rows": len(parts["test"]),
                               "mean_minus_cls_test_macro_f1": summary, "results": results}, indent=2) + "\n")
    (ROOT / "bench/pooling.md").write_text(
        f"# Classifier pooling: cls against mean\n\nMeasured by `{command}` on {platform.machine()} "
        f"({torch.get_num_threads()} threads), all-MiniLM-L6-v2 after the pretrain stage, {rows} IMDB training "
        f"labels, test split of {len(parts['test'])} reviews, params.yaml otherwise.\n\n{table(results)}\n")
    print(table(results))


if __name__ == "__main__":
    main()
