"""Every strategy side by side on the default data, in one run: test macro-F1, trainable fraction, train time.

    python bench/strategies.py                      # all strategies + the full fine-tune, params.yaml's caps
    python bench/strategies.py --max-train 200 --scratch-labels 2000 --name low_resource
    python bench/strategies.py --strategies lora,frozen --name quick
    python bench/strategies.py --strategies frozen --update    # re-measure one row of bench/results/strategies.json
    python bench/strategies.py --seeds 42,43,44     # each strategy over 3 seeds: mean, 95% interval, significance
    python bench/strategies.py --strategies lora --seeds 42,43,44 --lr-scheduler warmup_stable_decay --name lora_wsd
    python bench/strategies.py --readme             # README.md's table rewritten from bench/results/strategies.json

Over several seeds a row holds each run, the mean test macro-F1 with its 95% t-interval, and Welch's t-test of the
difference to the full fine-tune's runs (significant: p < 0.05). The seed sets the head's initial weights, the batch
order, dropout and the masking; the prepared split and the pretrained encoder are the pipeline's, the same for all.

Needs data/prepared and models/pretrained (`dvc repro pretrain`). Each strategy trains exactly as the peft
stage would (same params, seed, Trainer) and is scored on the test split. Results go to bench/results/<name>.json
(written after each strategy, so a stopped run keeps what it measured), bench/<name>.md and bench/<name>.png.
"""
import argparse
import json
import re
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.inference import cpu  # noqa: E402
from transfer import modeling, strategies  # noqa: E402
from transfer.config import LR_SCHEDULERS, load_params  # noqa: E402
from transfer.data import dataset  # noqa: E402
from transfer.evaluation import intervals  # noqa: E402
from transfer.tasks.classification import classification_report  # noqa: E402
from transfer.training import compute  # noqa: E402
from transfer.training.classifier import train_classifier  # noqa: E402

PRETRAINED = ROOT / "models/pretrained"
README = ROOT / "README.md"
FULL = "full fine-tune"
RUN_KEYS = ("seed", "test_macro_f1", "test_accuracy", "val_macro_f1", "train_seconds", "domain_adapter_seconds",
            "epochs_run", "best_epoch_step", "peak_memory_mb")


def run_one(name, params, parts, names, tokenizer, train_rows):
    torch.manual_seed(params["seed"])
    base = modeling.load_classifier(PRETRAINED, names, pooling=params["train"]["pooling"],
                                    attention_dropout=params["train"]["attention_dropout"])
    if name == FULL:
        plan, epochs, lr = strategies.Plan(base), params["finetune"]["epochs"], params["finetune"]["learning_rate"]
    else:
        shutil.rmtree(ROOT / "checkpoints/bench-domain", ignore_errors=True)  # no resuming a previous bench run
        plan = strategies.prepare(name, base, params, work_dir=ROOT / "checkpoints/bench-domain", tokenizer=tokenizer,
                                  domain_texts=parts[dataset.POOL]["text"].tolist())
        epochs, lr = params["peft"]["epochs"], params[name]["learning_rate"]
    run_parts = {**parts, "train": dataset.take(parts["train"], train_rows, params["seed"])[0]}
    work = ROOT / "checkpoints/bench"
    shutil.rmtree(work, ignore_errors=True)  # train_classifier would resume from a checkpoint left there
    summary, timing = train_classifier(plan.model, tokenizer, run_parts, params, epochs, lr, work,
                                       plan.param_groups, plan.callbacks)
    shutil.rmtree(work, ignore_errors=True)
    started = time.perf_counter()
    test = parts["test"]
    probabilities = modeling.predict(plan.model, tokenizer, test["text"], params["train"]["max_length"],
                                     params["evaluate"]["batch_size"], params["train"]["truncation"])
    report = classification_report(test["label"].to_numpy(), probabilities.argmax(axis=1), names)
    return {"strategy": name, "seed": params["seed"], "train_rows": len(run_parts["train"]), **summary, **timing,
            **plan.metrics,
            "test_accuracy": report["accuracy"], "test_macro_f1": report["macro_f1"],
            "test_seconds": round(time.perf_counter() - started, 1)}


def total_train_seconds(result):
    """adapter_stack also trains its domain adapter first: that time counts too."""
    return result["train_seconds"] + result.get("domain_adapter_seconds", 0)


def aggregate(name, runs):
    """One strategy's runs (one per seed) as its table row: the means, test macro-F1's 95% interval, each run."""
    f1 = intervals.summary([run["test_macro_f1"] for run in runs])
    return {"strategy": name, "train_rows": runs[0]["train_rows"], "seeds": [run["seed"] for run in runs],
            "trainable_params": runs[0]["trainable_params"], "trainable_fraction": runs[0]["trainable_fraction"],
            "train_seconds": round(sum(map(total_train_seconds, runs)) / len(runs), 1),
            "test_macro_f1": f1["mean"], "test_macro_f1_ci95": f1["ci95"],
            "test_accuracy": sum(run["test_accuracy"] for run in runs) / len(runs),
            "runs": [{key: run[key] for key in RUN_KEYS if key in run} for run in runs]}


def compare_to_full(results):
    """Each row's test macro-F1 against the full fine-tune's, over their seeds (Welch's t-test)."""
    full = next((r for r in results if r["strategy"] == FULL), None)
    for row in results:
        if full is not None and row is not full:
            reference = [run["test_macro_f1"] for run in full.get("runs", [full])]
            versus = intervals.summary([run["test_macro_f1"] for run in row.get("runs", [row])], reference)
            row["vs_full"] = {key: versus[key] for key in ("difference", "p_value", "significant")}
    return results


def machines(results):
    """The (CPU, precision) pairs the rows were measured on: train seconds compare only within one."""
    return sorted({(r.get("cpu"), r.get("precision")) for r in results if r.get("cpu")})


def table(results):
    full = next((r for r in results if r["strategy"] == FULL), None)
    lines = ["| strategy | labels | trainable params | fraction | train s | test macro-F1, mean ± 95% interval | "
             "vs full FT | difference significant (p) |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        ratio = f"{r['test_macro_f1'] / full['test_macro_f1']:.3f}" if full else "-"
        f1 = intervals.shown({"mean": r["test_macro_f1"], "ci95": r.get("test_macro_f1_ci95"),
                              "values": r.get("runs") or [r]})
        versus = r.get("vs_full") or {}
        if versus.get("p_value") is None:
            verdict = "-" if r is full else "one seed: not tested"
        else:
            verdict = f"{'yes' if versus['significant'] else 'no'} ({versus['p_value']:.3f})"
        mark = " *" if r.get("updated") else ""
        lines.append(f"| {r['strategy']}{mark} | {r['train_rows']} | {r['trainable_params']:,} | "
                     f"{r['trainable_fraction']:.2%} | {total_train_seconds(r):.0f} | {f1} | {ratio} | {verdict} |")
    if any(r.get("updated") for r in results):
        lines.append("\n\\* re-measured later, alone, with `--update` (see the commands above)")
    if len(machines(results)) > 1:
        lines.append("\n" + "; ".join(
            f"{', '.join(r['strategy'] for r in results if (r.get('cpu'), r.get('precision')) == machine)}: "
            f"{machine[0]}, {machine[1]}" for machine in machines(results)))
    return "\n".join(lines)


def readme_markers(name):
    return f"<!-- table from bench/results/{name}.json: python bench/strategies.py --name {name} --readme -->", \
        f"<!-- end of the table from bench/results/{name}.json -->"


def readme_pattern(name):
    start, end = readme_markers(name)
    return re.compile(f"({re.escape(start)}\\n)(.*?)(\\n{re.escape(end)})", re.DOTALL)


def readme_table(text, name):
    """The table between `name`'s markers in README.md's text, or None where it has none."""
    match = readme_pattern(name).search(text)
    return match and match.group(2)


def with_readme_table(text, name, results):
    """README.md's text with `name`'s table rewritten from its results."""
    rewritten, found = readme_pattern(name).subn(lambda match: match.group(1) + table(results) + match.group(3),
                                                 text, count=1)
    if not found:
        raise SystemExit(f"README.md has no table for {name}: put the lines {' and '.join(readme_markers(name))} "
                         "where it goes")
    return rewritten


def plot(results, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for r in results:
        seconds = total_train_seconds(r)
        label = f"{r['strategy']} ({r['train_rows']})" if r["train_rows"] != results[0]["train_rows"] else r["strategy"]
        interval = r.get("test_macro_f1_ci95")
        for axis, x in ((left, r["trainable_fraction"]), (right, seconds)):
            axis.scatter(x, r["test_macro_f1"], s=30)
            if interval:  # the 95% interval over the seeds
                axis.errorbar(x, r["test_macro_f1"], yerr=(interval[1] - interval[0]) / 2, capsize=3, alpha=0.6)
            axis.annotate(label, (x, r["test_macro_f1"]), fontsize=8, xytext=(4, 3), textcoords="offset points")
    left.set(xscale="log", xlabel="trainable fraction of parameters (log)", ylabel="test macro-F1")
    right.set(xlabel="train seconds (2-core CPU)" if not torch.cuda.is_available() else "train seconds",
              ylabel="test macro-F1")
    for axis in (left, right):
        axis.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategies", default=",".join((FULL,) + strategies.NAMES),
                        help="comma-separated; default: the full fine-tune and every strategy")
    parser.add_argument("--max-train", type=int, default=None, help="labelled training rows (default: all prepared)")
    parser.add_argument("--scratch-labels", type=int, default=None,
                        help="train scratch on this many labels instead (the low-resource comparison)")
    parser.add_argument("--epochs", type=int, default=None, help="override finetune.epochs and peft.epochs")
    parser.add_argument("--evals-per-epoch", type=int, default=None, help="override train.evals_per_epoch")
    parser.add_argument("--lr-scheduler", choices=LR_SCHEDULERS, help="override train.lr_scheduler")
    parser.add_argument("--seeds", default=None,
                        help="comma-separated seeds, each strategy trained once per seed (default: params.yaml's)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), help="compute.precision of every run "
                        "(default params.yaml's; bf16 halves a CPU run where the CPU has AVX-512 BF16 or AMX)")
    parser.add_argument("--name", default="strategies")
    parser.add_argument("--readme", action="store_true",
                        help="train nothing: rewrite README.md's table from bench/results/<name>.json")
    parser.add_argument("--update", action="store_true",
                        help="replace these strategies' rows in the existing results instead of starting afresh")
    args = parser.parse_args()
    out = ROOT / "bench/results" / f"{args.name}.json"
    if args.readme:
        README.write_text(with_readme_table(README.read_text(), args.name, json.loads(out.read_text())["results"]))
        return
    params = load_params(ROOT / "params.yaml")
    if args.precision:
        params["compute"]["precision"] = args.precision
    precision = compute.precision(params["compute"]["precision"])
    if args.epochs:
        params["finetune"]["epochs"] = params["peft"]["epochs"] = args.epochs
    if args.evals_per_epoch:
        params["train"]["evals_per_epoch"] = args.evals_per_epoch
    if args.lr_scheduler:
        params["train"]["lr_scheduler"] = args.lr_scheduler
    parts, names = dataset.load_prepared(ROOT / "data/prepared")
    tokenizer = modeling.load_tokenizer(PRETRAINED)
    rows = args.max_train or len(parts["train"])
    out.parent.mkdir(parents=True, exist_ok=True)
    command = f"python bench/{Path(__file__).name} {' '.join(sys.argv[1:])}".strip()
    previous = json.loads(out.read_text()) if args.update and out.exists() else {}
    results, commands = previous.get("results", []), previous.get("commands", []) + [command]
    for row in results:  # rows from before rows named their CPU and precision: the file's
        row.setdefault("cpu", previous.get("cpu", {}).get("name"))
        row.setdefault("precision", previous.get("precision"))
    seeds = [int(seed) for seed in args.seeds.split(",")] if args.seeds else [params["seed"]]
    chip = cpu()
    for name in args.strategies.split(","):
        train_rows = args.scratch_labels if name == "scratch" and args.scratch_labels else rows
        runs = []
        for seed in seeds:
            print(f"--- {name} on {train_rows} labels, seed {seed}", flush=True)
            runs.append(run_one(name, {**params, "seed": seed}, parts, names, tokenizer, train_rows))
            print(json.dumps(runs[-1]), flush=True)
        result = {**aggregate(name, runs), "updated": args.update, "cpu": chip["name"], "precision": precision}
        index = next((i for i, r in enumerate(results) if r["strategy"] == name), len(results))
        results[index:index + 1] = [result]
        compare_to_full(results)
        out.write_text(json.dumps({"device": str(modeling.pick_device()), "cpu": chip,
                                   "precision": precision, "evals_per_epoch": params["train"]["evals_per_epoch"],
                                   "early_stopping_start": params["train"]["early_stopping_start"],
                                   "lr_scheduler": params["train"]["lr_scheduler"],
                                   "decay_ratio": params["train"]["decay_ratio"],
                                   "torch_threads": torch.get_num_threads(),
                                   "commands": commands, "results": results}, indent=2) + "\n")
    title = (f"{len(results)} strategies, {rows} training labels, {params['peft']['epochs']} epochs, "
             f"seeds {', '.join(map(str, seeds))}, all-MiniLM-L6-v2 on IMDB")
    plot(results, ROOT / "bench" / f"{args.name}.png", title)
    device = chip["name"] if modeling.pick_device().type == "cpu" else torch.cuda.get_device_name()
    if len(machines(results)) > 1:
        device = f"the machines named under the table, last {device}"
    (ROOT / "bench" / f"{args.name}.md").write_text(
        f"# {title}\n\nMeasured by `{'`, then `'.join(commands)}` on {device} ({torch.get_num_threads()} threads, "
        f"{precision}); test split of {len(parts['test'])} reviews.\n\n"
        f"{table(results)}\n\n![macro-F1 vs trainable fraction and train time]({args.name}.png)\n")
    print(table(results))


if __name__ == "__main__":
    main()
