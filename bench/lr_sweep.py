"""Each strategy's learning rate chosen on the validation split: a small grid around params.yaml's rate, side by
side in one run.

    python bench/lr_sweep.py --strategies frozen,prefix,prompt,ia3     # rates x1/3, x1, x3 of params.yaml's
    python bench/lr_sweep.py --strategies frozen --factors 10        # widen a grid: earlier rates are kept
    python bench/lr_sweep.py --strategies frozen --write-params       # also write the chosen rates into params.yaml
    python bench/lr_sweep.py --strategies frozen --factors '' --write-params   # write what an earlier sweep chose

The rate with the best validation macro-F1 is chosen (the test split only reports; a tie keeps params.yaml's rate).
Each run trains as bench/strategies.py's run_one does: the peft stage's params, seed and Trainer, the pipeline's
prepared split and pretrained encoder. The same grid through DVC, one experiment per rate:

    dvc exp run --queue -S strategy=frozen -S 'frozen.learning_rate=6e-3,2e-2,6e-2'
    dvc queue start -j 2   # then: dvc exp show --drop '.*' --keep '^(Experiment|frozen\.learning_rate|peft\.val_macro_f1)$'

Needs data/prepared and models/pretrained (`dvc repro pretrain`). Writes bench/results/lr_sweep.json (after each
run, merged with earlier sweeps of other strategies) and bench/lr_sweep.md.
"""
import argparse
import copy
import json
import re
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
from transfer.training import compute  # noqa: E402

OUT = ROOT / "bench/results/lr_sweep.json"


def section(name):
    return "finetune" if name == FULL else name


def choose(runs, current):
    """The run with the best validation macro-F1; on a tie, params.yaml's rate."""
    return max(runs, key=lambda run: (run["val_macro_f1"], run["learning_rate"] == current))


def shown(rate):
    """2.0e-2, as params.yaml writes rates (Python's format pads the exponent: 2.0e-02)."""
    return re.sub(r"e([+-])0(\d)", r"e\1\2", f"{rate:.1e}")


def write_rate(params_text, name, rate):
    """params.yaml's text with `name`'s section's learning_rate set to `rate`, its comment kept."""
    pattern = re.compile(rf"(^{re.escape(name)}:.*\n(?:[ #].*\n)*?  learning_rate: *)(\S+)", re.MULTILINE)
    if not pattern.search(params_text):
        raise ValueError(f"params.yaml has no learning_rate under {name}:")
    return pattern.sub(lambda match: f"{match.group(1)}{shown(rate)}", params_text, count=1)


def table(results):
    lines = ["| strategy | params.yaml rate | rates tried: validation / test macro-F1 | chosen (validation) | "
             "train s per run |", "|---|---:|---|---:|---:|"]
    for name, row in results.items():
        tried = "<br>".join(f"{shown(run['learning_rate'])}: {run['val_macro_f1']:.4f} / {run['test_macro_f1']:.4f}"
                            for run in row["runs"])
        seconds = "<br>".join(f"{run['train_seconds']:.0f}" + (" (bf16)" if run.get("precision") == "bf16" else "")
                              for run in row["runs"])
        lines.append(f"| {name} | {shown(row['current'])} | {tried} | {shown(row['chosen'])} | {seconds} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategies", required=True, help=f"comma-separated strategy names, or '{FULL}'")
    parser.add_argument("--factors", default="0.333,1,3", help="multiples of params.yaml's rate to try")
    parser.add_argument("--write-params", action="store_true", help="write each chosen rate into params.yaml")
    parser.add_argument("--precision", choices=("fp32", "bf16"), help="compute.precision of these runs "
                        "(default params.yaml's; bf16 halves a CPU run where the CPU has AVX-512 BF16 or AMX)")
    args = parser.parse_args()
    params = load_params(ROOT / "params.yaml")
    params["compute"]["precision"] = args.precision or params["compute"]["precision"]
    precision = compute.precision(params["compute"]["precision"])  # as it ran: auto is fp32 on a CPU
    parts, names = dataset.load_prepared(ROOT / "data/prepared")
    tokenizer = modeling.load_tokenizer(PRETRAINED)
    previous = json.loads(OUT.read_text()) if OUT.exists() else {}
    results = previous.get("results", {})
    commands = previous.get("commands", []) + ([f"python bench/lr_sweep.py {' '.join(sys.argv[1:])}".strip()]
                                               if args.factors else [])  # writing earlier choices measures nothing
    for name in args.strategies.split(","):
        current = params[section(name)]["learning_rate"]
        rates = [float(f"{current * factor:.1e}") for factor in map(float, filter(None, args.factors.split(",")))]
        earlier = results.get(name, {}).get("runs", [])  # a wider grid keeps the rates an earlier sweep tried
        runs = [run for run in earlier if run["learning_rate"] not in rates]
        for rate in rates:
            run_params = copy.deepcopy(params)
            run_params[section(name)]["learning_rate"] = rate
            print(f"--- {name} at learning rate {shown(rate)}", flush=True)
            result = run_one(name, run_params, parts, names, tokenizer, len(parts["train"]))
            runs.append({"learning_rate": rate, "precision": precision,
                         "val_macro_f1": round(result["val_macro_f1"], 4),
                         "test_macro_f1": round(result["test_macro_f1"], 4),
                         "train_seconds": round(total_train_seconds(result), 1)})
            print(json.dumps(runs[-1]), flush=True)
            runs.sort(key=lambda run: run["learning_rate"])
            results[name] = {"current": current, "chosen": choose(runs, current)["learning_rate"], "runs": runs}
            OUT.write_text(json.dumps({"commands": commands, "cpu": cpu(), "train_rows": len(parts["train"]),
                                       "results": results}, indent=2) + "\n")
    (ROOT / "bench/lr_sweep.md").write_text(
        f"# Learning rate per strategy, chosen on the validation split\n\nMeasured by `{'`, then `'.join(commands)}` "
        f"on {cpu()['name']} ({torch.get_num_threads()} threads): all-MiniLM-L6-v2 after the pretrain stage, "
        f"{len(parts['train']):,} IMDB training labels, {len(parts['validation'])} validation and "
        f"{len(parts['test']):,} "
        f"test reviews, one seed ({params['seed']}), params.yaml otherwise; fp32 unless the run says bf16 "
        f"(`--precision bf16`).\n\n{table(results)}\n")
    print(table(results))
    if args.write_params:
        text = (ROOT / "params.yaml").read_text()
        for name in args.strategies.split(","):
            text = write_rate(text, section(name), results[name]["chosen"])
        (ROOT / "params.yaml").write_text(text)


if __name__ == "__main__":
    main()
