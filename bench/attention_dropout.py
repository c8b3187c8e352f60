"""Dropout on the attention weights, the model's own (0.1 for BERT) against none, side by side in one run, over seeds:
test macro-F1 and train seconds per strategy. With `--compare masks`: dropout's random masks, PyTorch's against the
fast ones of compute.cpu_dropout (the same rate, other random numbers), the same way.

    python bench/attention_dropout.py                          # full fine-tune and lora, seeds 42,43,44
    python bench/attention_dropout.py --strategies lora --seeds 42 --max-train 500
    python bench/attention_dropout.py --compare masks --strategies "full fine-tune"

On a CPU, dropout on the attention weights draws one random number per weight (batch x heads x length x length) and
keeps PyTorch's SDPA on its slow path: this bench measures what params train.attention_dropout buys in time and costs
in quality. Needs data/prepared and models/pretrained (`dvc repro pretrain`). Each run trains as the finetune or peft
stage would (bench/strategies.py's run_one: same params, seed, Trainer), once per setting, both settings of a seed
one after the other so that a load on the machine hits both, and is scored on the test split. Writes
bench/results/attention_dropout.json and bench/attention_dropout.md (dropout_masks.json and .md for masks).
"""
import argparse
import copy
import json
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
from transfer.evaluation import intervals  # noqa: E402

COMPARISONS = {  # name: (the params section and key the sides set, {side: value}, the file names, the title,
    #                the sides' names in the table)
    "attention_dropout": (("train", "attention_dropout"), {"own": None, "none": 0.0}, "attention_dropout",
                          "Attention dropout: the model's own against none", ("own (0.1)", "none")),
    "masks": (("compute", "cpu_dropout"), {"own": "native", "none": "fast"}, "dropout_masks",
              "Dropout's masks: PyTorch's against compute.cpu_dropout's fast ones", ("PyTorch's masks", "fast masks")),
}
SETTINGS = COMPARISONS["attention_dropout"][1]
KEPT = ("seed", "val_macro_f1", "test_macro_f1", "epochs_run", "best_epoch_step")


def compared(runs):
    """One strategy's runs per setting, summarised: test macro-F1 per side and the difference none - own (Welch's
    test), the per-seed differences, and the mean train seconds with their ratio own / none."""
    f1 = {side: [run["test_macro_f1"] for run in runs[side]] for side in SETTINGS}
    seconds = {side: sum(run["train_seconds"] for run in runs[side]) / len(runs[side]) for side in SETTINGS}
    versus = intervals.summary(f1["none"], f1["own"])
    return {"test_macro_f1": {side: intervals.summary(values) for side, values in f1.items()},
            "difference": versus["difference"], "p_value": versus["p_value"], "significant": versus["significant"],
            "per_seed_difference": [round(none - own, 4) for none, own in zip(f1["none"], f1["own"])],
            "train_seconds": {side: round(value, 1) for side, value in seconds.items()},
            "speedup": round(seconds["own"] / seconds["none"], 3)}


def table(summaries, names=COMPARISONS["attention_dropout"][4]):
    own, other = names
    lines = [f"| strategy | {own}: test macro-F1 | {other}: test macro-F1 | {other} - {own} (p) | per seed | "
             f"train s {own} / {other} | speed-up |", "|---|---:|---:|---:|---|---:|---:|"]
    for name, s in summaries.items():
        p = "-" if s["p_value"] is None else f"{s['p_value']:.2f}"
        lines.append(f"| {name} | {intervals.shown(s['test_macro_f1']['own'])} | "
                     f"{intervals.shown(s['test_macro_f1']['none'])} | {s['difference']:+.4f} ({p}) | "
                     f"{', '.join(f'{d:+.3f}' for d in s['per_seed_difference'])} | "
                     f"{s['train_seconds']['own']:.0f} / {s['train_seconds']['none']:.0f} | {s['speedup']:.2f}x |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategies", default=f"{FULL},lora", help="comma-separated")
    parser.add_argument("--seeds", default="42,43,44", help="comma-separated")
    parser.add_argument("--max-train", type=int, default=None, help="labelled training rows (default: all prepared)")
    parser.add_argument("--compare", choices=COMPARISONS, default="attention_dropout")
    parser.add_argument("--name", help="the results' file names (default: the comparison's), so that another "
                                       "strategy's run does not replace the one before")
    args = parser.parse_args()
    (section, key), sides, file_name, title, side_names = COMPARISONS[args.compare]
    file_name = args.name or file_name
    params = load_params(ROOT / "params.yaml")
    parts, names = dataset.load_prepared(ROOT / "data/prepared")
    tokenizer = modeling.load_tokenizer(PRETRAINED)
    rows = args.max_train or len(parts["train"])
    command = f"python bench/{Path(__file__).name} {' '.join(sys.argv[1:])}".strip()
    chip, out = cpu(), ROOT / f"bench/results/{file_name}.json"
    runs, summaries = {}, {}
    for name in args.strategies.split(","):
        for seed in map(int, args.seeds.split(",")):
            for side, value in sides.items():
                run_params = copy.deepcopy(params)
                run_params["seed"], run_params[section][key] = seed, value
                print(f"--- {name}, seed {seed}, {section}.{key} {value} ({side}), {rows} labels", flush=True)
                result = run_one(name, run_params, parts, names, tokenizer, rows)
                runs.setdefault(name, {}).setdefault(side, []).append(
                    {**{key: result[key] for key in KEPT}, "train_seconds": round(total_train_seconds(result), 1)})
                print(json.dumps(runs[name][side][-1]), flush=True)
        summaries[name] = compared(runs[name])
        out.write_text(json.dumps({"command": command, "cpu": chip, "torch_threads": torch.get_num_threads(),
                                   "train_rows": rows, "test_rows": len(parts["test"]), "settings": {f"{section}.{key}": sides},
                                   "summaries": summaries, "runs": runs}, indent=2) + "\n")
    (ROOT / f"bench/{file_name}.md").write_text(
        f"# {title}\n\nMeasured by `{command}` on {chip['name']} "
        f"({torch.get_num_threads()} threads), all-MiniLM-L6-v2 after the pretrain stage, {rows} IMDB training "
        f"labels, test split of {len(parts['test'])} reviews, params.yaml otherwise. p: Welch's t-test over the "
        f"seeds; per seed: {side_names[1]} - {side_names[0]} with the same seed.\n\n{table(summaries, side_names)}\n")
    print(table(summaries, side_names))


if __name__ == "__main__":
    main()
