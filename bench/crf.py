"""The tagging head, softmax (each word its own highest tag) against a CRF (token_classification.crf: the sentence's
tags decoded together, valid IOB2), side by side in one run: test entity F1 of the full fine-tune and of lora.

    python bench/crf.py                       # params.yaml's token_classification section (WNUT-16 by default)
    python bench/crf.py --strategies finetune --epochs 1

Each run trains as tc_finetune or tc_peft would (same params, seed, split as tc_prepare makes it, Trainer, best
validation epoch kept) and is scored on the test split with seqeval's strict IOB2 entity F1. `invalid_iob2` is the
share of test sentences whose tags as predicted hold an I- tag that continues nothing (strict scoring counts no
entity there). Writes bench/results/crf.json and bench/crf.md.
"""
import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.inference import cpu  # noqa: E402
from transfer.config import load_params  # noqa: E402
from transfer.tasks import token_classification as tc  # noqa: E402

HEADS = {"softmax": False, "crf": True}


def invalid(tags):
    return any(b.startswith("I-") and (a == "O" or a[2:] != b[2:]) for a, b in zip(["O"] + tags, tags))


def run_one(strategy, crf, params, parts, names):
    params = copy.deepcopy(params)
    cfg = params["token_classification"]
    cfg["crf"] = crf
    source = tc.check_model(cfg["model"], params["model"]["trust_remote_code"])
    torch.manual_seed(params["seed"])
    model, tokenizer = tc.load_model(source, names)
    if strategy != "finetune":
        cfg["strategy"] = strategy
        model = tc.with_strategy(model, cfg)
    model = tc.with_crf(model, cfg)
    rate = cfg["finetune_learning_rate"] if strategy == "finetune" else cfg["peft_learning_rates"][strategy]
    with tempfile.TemporaryDirectory() as checkpoints:
        seconds, val_f1 = tc.train(model, tokenizer, parts, cfg, params, checkpoints, cfg["epochs"], rate)
    predicted = tc.predict_tags(model, tokenizer, parts["test"], cfg["max_length"])
    scores = tc.entity_scores([tags for _, tags in parts["test"]], predicted)
    return {"val_entity_f1": round(val_f1, 4), "test_entity_f1": round(scores["f1"], 4),
            "test_precision": round(scores["precision"], 4), "test_recall": round(scores["recall"], 4),
            "invalid_iob2": round(sum(map(invalid, predicted)) / len(predicted), 4),
            "train_seconds": round(seconds, 1)}


def table(results):
    lines = ["| strategy | softmax: val / test entity F1 | crf: val / test entity F1 | test F1 crf - softmax | "
             "invalid IOB2 sentences softmax / crf | train s softmax / crf |", "|---|---:|---:|---:|---:|---:|"]
    for name, runs in results.items():
        soft, crf = runs["softmax"], runs["crf"]
        lines.append(f"| {name} | {soft['val_entity_f1']:.4f} / {soft['test_entity_f1']:.4f} | "
                     f"{crf['val_entity_f1']:.4f} / {crf['test_entity_f1']:.4f} | "
                     f"{crf['test_entity_f1'] - soft['test_entity_f1']:+.4f} | "
                     f"{soft['invalid_iob2']:.1%} / {crf['invalid_iob2']:.1%} | "
                     f"{soft['train_seconds']:.0f} / {crf['train_seconds']:.0f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategies", default="finetune,lora", help="comma-separated: finetune, lora, ia3")
    parser.add_argument("--epochs", type=int, default=None, help="default: token_classification.epochs")
    args = parser.parse_args()
    params = load_params(ROOT / "params.yaml")
    cfg = params["token_classification"]
    if args.epochs:
        cfg["epochs"] = args.epochs
    parts = tc.split(tc.read_sentences(cfg["source"], ROOT / "data/downloads"), cfg, params["seed"])
    names = tc.label_names(parts)
    command = f"python bench/{Path(__file__).name} {' '.join(sys.argv[1:])}".strip()
    results = {}
    for strategy in args.strategies.split(","):
        for head, crf in HEADS.items():
            print(f"--- {strategy}, {head}", flush=True)
            results.setdefault(strategy, {})[head] = run_one(strategy, crf, params, parts, names)
            print(json.dumps(results[strategy][head]), flush=True)
    machine = cpu()
    (ROOT / "bench/results/crf.json").write_text(json.dumps(
        {"command": command, "cpu": machine, "source": cfg["source"], "epochs": cfg["epochs"],
         "test_sentences": len(parts["test"]), "crf_learning_rate": cfg["crf_learning_rate"],
         "crf_minus_softmax_test_entity_f1": {name: round(runs["crf"]["test_entity_f1"] -
                                                          runs["softmax"]["test_entity_f1"], 4)
                                              for name, runs in results.items()},
         "results": results}, indent=2) + "\n")
    (ROOT / "bench/crf.md").write_text(
        f"# Tagging head: softmax against CRF\n\nMeasured by `{command}` on {machine['name']} ({machine['threads']} "
        f"threads): all-MiniLM-L6-v2, {cfg['source']}, {len(parts['train'])} train / {len(parts['test'])} test "
        f"sentences, {cfg['epochs']} epochs, params.yaml otherwise (CRF transitions at rate "
        f"{cfg['crf_learning_rate']}).\n\n{table(results)}\n")
    print(table(results))


if __name__ == "__main__":
    main()
