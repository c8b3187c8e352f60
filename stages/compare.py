"""Strategies compared over seeds, from the experiments DVC holds for this commit: `python -m stages.compare`.

    dvc exp run --queue -S strategy=lora,ia3,frozen -S train.seed=1,2,3    # 9 experiments
    dvc queue start                                                        # or: dvc exp run --run-all
    python -m stages.compare                                               # one table, printed
    python -m stages.compare --json comparison.json --md comparison.md     # and written

Each experiment is one training run of its strategy (train.seed, or the top-level seed where that is null; the
split and the pretrained encoder are the same for all). Per strategy: the seeds it ran with, the mean test
macro-F1 with its 95% t-interval, the trainable share and the train seconds; the full fine-tune of the same
experiments is the reference, and Welch's t-test says whether a strategy's difference to it is significant.
Experiments that ran the same strategy and seed count once (the newest).
"""
import argparse
import json
import subprocess
import sys

from transfer.evaluation import intervals
from transfer.schema import UserError
from transfer.training.classifier import training_seed

FULL = "full fine-tune"


def experiments(shown):
    """(name, params, metrics) of the baseline commit and each experiment in `dvc exp show --json` output, newest
    first; the workspace is left out (it repeats the experiment applied last, or is a run not yet committed)."""
    found = []
    for entry in shown:
        if entry.get("rev") == "workspace":
            continue
        revs = [rev for group in entry.get("experiments") or [] for rev in group.get("revs", [])]
        for rev in [*revs, entry]:
            data = rev.get("data") or {}
            params = (data.get("params") or {}).get("params.yaml", {}).get("data")
            metrics = {path: (value or {}).get("data") for path, value in (data.get("metrics") or {}).items()}
            if rev.get("error") is None and params and metrics.get("metrics/evaluate.json"):
                found.append((rev.get("name") or rev.get("rev", "")[:7], params, metrics))
    return found


def runs(found):
    """{strategy or FULL: {seed: run}}: test macro-F1, trainable fraction and train seconds of each training run."""
    table = {}
    for _, params, metrics in found:
        seed = training_seed(params)
        evaluate = metrics["metrics/evaluate.json"]
        peft, peft_time = metrics.get("metrics/peft.json") or {}, metrics.get("metrics/timing/peft.json") or {}
        finetune_time = metrics.get("metrics/timing/finetune.json") or {}
        table.setdefault(params["strategy"], {}).setdefault(seed, {
            "macro_f1": evaluate["peft"]["macro_f1"], "trainable_fraction": peft.get("trainable_fraction"),
            "train_seconds": peft_time.get("peft_train_seconds", peft_time.get("train_seconds"))})
        table.setdefault(FULL, {}).setdefault(seed, {
            "macro_f1": evaluate["finetune"]["macro_f1"], "trainable_fraction": 1.0,
            "train_seconds": finetune_time.get("train_seconds")})
    return table


def compare(table):
    """One row per strategy, the full fine-tune first, then by mean test macro-F1."""
    reference = [run["macro_f1"] for run in table[FULL].values()]
    rows = []
    for strategy, by_seed in table.items():
        f1 = [run["macro_f1"] for run in by_seed.values()]
        seconds = [run["train_seconds"] for run in by_seed.values() if run["train_seconds"] is not None]
        rows.append({"strategy": strategy, "seeds": sorted(by_seed),
                     "test_macro_f1": intervals.summary(f1, None if strategy == FULL else reference),
                     "trainable_fraction": next(iter(by_seed.values()))["trainable_fraction"],
                     "train_seconds": round(sum(seconds) / len(seconds), 1) if seconds else None})
    return sorted(rows, key=lambda row: (row["strategy"] != FULL, -row["test_macro_f1"]["mean"]))


def markdown(rows):
    lines = ["| strategy | seeds | test macro-F1, mean ± 95% interval | vs full fine-tune | significant (p) | "
             "trainable | train s |", "|---|---|---:|---:|---|---:|---:|"]
    for row in rows:
        f1 = row["test_macro_f1"]
        versus = "" if "difference" not in f1 else f"{f1['difference']:+.4f}"
        verdict = "" if "p_value" not in f1 else (
            "needs 2+ seeds each" if f1["p_value"] is None else
            f"{'yes' if f1['significant'] else 'no'} ({f1['p_value']:.3f})")
        share = "" if row["trainable_fraction"] is None else f"{row['trainable_fraction']:.2%}"
        seconds = "" if row["train_seconds"] is None else f"{row['train_seconds']:.0f}"
        lines.append(f"| {row['strategy']} | {', '.join(map(str, row['seeds']))} | {intervals.shown(f1)} | "
                     f"{versus} | {verdict} | {share} | {seconds} |")
    return "\n".join(lines)


def dvc_experiments():
    done = subprocess.run(["dvc", "exp", "show", "--json"], capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(f"`dvc exp show --json` failed: {done.stderr.strip()[-300:]}")
    return json.loads(done.stdout)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the rows to this JSON file too")
    parser.add_argument("--md", help="write the table to this markdown file too")
    args = parser.parse_args(argv)
    found = experiments(dvc_experiments())
    if not found:
        raise UserError("no finished experiment with metrics/evaluate.json here: run some first, e.g. "
                        "`dvc exp run --queue -S strategy=lora,frozen -S train.seed=1,2,3` and `dvc queue start`.")
    rows = compare(runs(found))
    table = markdown(rows)
    print(table)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump({"experiments": [name for name, _, _ in found], "rows": rows}, out, indent=2)
    if args.md:
        with open(args.md, "w", encoding="utf-8") as out:
            out.write(table + "\n")


if __name__ == "__main__":
    try:
        main()
    except UserError as error:
        sys.exit(f"error: {error}")
