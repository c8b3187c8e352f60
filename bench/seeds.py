"""One strategy of the default run over several seeds, as its stage trains it: how far the committed seed's test
accuracy sits from its neighbours'.

    python bench/seeds.py                                    # full fine-tune, seeds 42,43,44 (~9 min on 2 CPU cores)
    python bench/seeds.py --strategy lora --seeds 42,43

Each run is bench/strategies.py's run_one (params.yaml as it is, the seed set as the top-level seed, the pretrained
encoder of models/pretrained, every prepared training row), scored on the test split. For every strategy over seeds,
with intervals and the LR sweep, see bench/strategies.py. Writes bench/results/seeds.json and bench/seeds.md.
"""
import argparse
import copy
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.inference import cpu  # noqa: E402
from bench.strategies import FULL, PRETRAINED, run_one  # noqa: E402
from transfer import modeling  # noqa: E402
from transfer.config import load_params  # noqa: E402
from transfer.data import dataset  # noqa: E402
from transfer.outputs import write_json  # noqa: E402

KEPT = ("seed", "best_epoch_step", "val_macro_f1", "test_accuracy", "test_macro_f1", "train_seconds")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategy", default=FULL)
    parser.add_argument("--seeds", default="42,43,44", help="comma-separated")
    args = parser.parse_args()
    params = load_params(ROOT / "params.yaml")
    parts, names = dataset.load_prepared(ROOT / "data/prepared")
    tokenizer = modeling.load_tokenizer(PRETRAINED)
    runs = []
    for seed in map(int, args.seeds.split(",")):
        run_params = copy.deepcopy(params)
        run_params["seed"] = seed
        result = run_one(args.strategy, run_params, parts, names, tokenizer, len(parts["train"]))
        runs.append({key: round(result[key], 4) if isinstance(result[key], float) else result[key] for key in KEPT})
        print(json.dumps(runs[-1]), flush=True)
    accuracy = [run["test_accuracy"] for run in runs]
    result = {"command": f"python bench/seeds.py --strategy '{args.strategy}' --seeds {args.seeds}", "cpu": cpu(),
              "torch_threads": torch.get_num_threads(), "strategy": args.strategy, "train_rows": len(parts["train"]),
              "test_rows": len(parts["test"]), "runs": runs, "test_accuracy_mean": round(float(np.mean(accuracy)), 4),
              "test_accuracy_std": round(float(np.std(accuracy, ddof=1)), 4) if len(runs) > 1 else None}
    write_json(ROOT / "bench/results/seeds.json", result, exact=True)
    lines = [f"Measured by `{result['command']}` on {result['cpu']['name']} ({result['torch_threads']} threads): "
             f"{args.strategy}, {result['train_rows']} IMDB training labels, {result['test_rows']} test reviews, "
             "params.yaml otherwise.", "", "| seed | best step | val macro-F1 | test accuracy | test macro-F1 | "
             "train seconds |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['seed']} | {r['best_epoch_step']} | {r['val_macro_f1']} | {r['test_accuracy']} | "
              f"{r['test_macro_f1']} | {r['train_seconds']} |" for r in runs]
    lines += ["", f"Test accuracy: mean {result['test_accuracy_mean']}, standard deviation "
                  f"{result['test_accuracy_std']} over {len(runs)} seeds.", ""]
    (ROOT / "bench/seeds.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
