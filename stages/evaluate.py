"""Stage 5: the full fine-tune, the strategy's model and the TF-IDF baseline side by side on the test split,
with the quality guards (one class predicted, a class never predicted, below the baseline) and the leaderboard."""
import sys
import time
from pathlib import Path

import pandas as pd

from transfer import machine, modeling, strategies
from transfer.baselines import tfidf
from transfer.config import run_stage
from transfer.data import dataset
from transfer.evaluation import leaderboard, quality
from transfer.outputs import read_json, replaced_together, write_csv, write_json
from transfer.tasks.classification import classification_report, score_curves
from transfer.training import compute

PRETRAINED = Path("models/pretrained")
PLOTS = Path("metrics/plots")
METRICS = Path("metrics/evaluate.json")
LEADERBOARD = Path("metrics/leaderboard.json")
TIMING = Path("metrics/timing/evaluate.json")
PEFT_DIR = Path("models/peft")


def test_probabilities(params, test):
    """({model: (test rows, classes) probabilities}, {model: milliseconds per text}) for the three models."""
    train_cfg = params["train"]
    tokenizer = modeling.load_tokenizer(PRETRAINED)
    models = {"finetune": modeling.load_saved_classifier("models/finetuned"),
              "peft": strategies.load_adapted(PEFT_DIR, PRETRAINED), "baseline": tfidf.load("models/baseline")}
    probabilities, latency = {}, {}
    for key, model in models.items():
        started = time.perf_counter()
        if key == "baseline":
            probabilities[key] = model.predict_proba(test["text"])
        else:
            with compute.cpu_kernels(params["compute"]):
                probabilities[key] = modeling.predict(model, tokenizer, test["text"], train_cfg["max_length"],
                                                      params["evaluate"]["batch_size"], train_cfg["truncation"])
        latency[key] = round((time.perf_counter() - started) * 1000 / max(len(test), 1), 2)
    return probabilities, latency


def board(params, parts, names, results):
    """The leaderboard: every trained model and the majority-class dummy, ranked by validation macro-F1."""
    val_f1 = {key: read_json(f"metrics/{key}.json")["val_macro_f1"] for key in ("finetune", "peft", "baseline")}
    train, validation, test = (parts[name]["label"] for name in dataset.SPLITS)
    results = {**results, "majority": leaderboard.majority(train, test, names)}
    val_f1["majority"] = leaderboard.majority(train, validation, names)["macro_f1"]
    peft_files = ([PEFT_DIR / "merged"] if read_json(PEFT_DIR / strategies.STRATEGY_FILE)["mergeable"]
                  else [PRETRAINED / "model.safetensors", PEFT_DIR / "trained"])
    sizes = {"finetune": leaderboard.folder_mb("models/finetuned"), "peft": leaderboard.folder_mb(*peft_files),
             "baseline": leaderboard.folder_mb("models/baseline"), "majority": 0.0}
    labels = {"finetune": "full fine-tune", "peft": params["strategy"], "baseline": "TF-IDF baseline",
              "majority": "majority class"}
    return leaderboard.ranked({key: leaderboard.row(labels[key], val_f1[key], results[key], sizes[key])
                               for key in labels})


def main(params):
    parts, names = dataset.load_prepared()
    test = parts["test"]
    labels = test["label"].to_numpy()
    results, per_class, tables = {}, [], {}
    probabilities_of, latency = test_probabilities(params, test)
    for key, probabilities in probabilities_of.items():
        predictions = probabilities.argmax(axis=1)
        results[key] = classification_report(labels, predictions, names)
        curves = score_curves(labels, probabilities)  # None when the test split has one class
        results[key]["roc_auc"] = curves and curves["roc_auc"]
        tables[f"roc_{key}.csv"] = pd.DataFrame(curves["roc"] if curves else {"fpr": [], "tpr": []})
        tables[f"precision_recall_{key}.csv"] = pd.DataFrame(
            curves["precision_recall"] if curves else {"recall": [], "precision": []})
        tables[f"confusion_{key}.csv"] = pd.DataFrame(
            {"actual": [names[i] for i in labels], "predicted": [names[i] for i in predictions]})
        per_class += [{"row": f"{name} ({key})", "model": key, "class": name, **scores}
                      for name, scores in results[key]["per_class"].items()]
    tables["per_class.csv"] = pd.DataFrame(per_class)
    warnings = [warning for key in ("finetune", "peft")
                for warning in quality.guard(key, results[key], names, "test", params["strategy"], results["baseline"])]
    peft = read_json("metrics/peft.json")
    summary = {
        "test_rows": len(test),
        "strategy": params["strategy"],
        **results,
        "peft_macro_f1_vs_finetune": results["peft"]["macro_f1"] / max(results["finetune"]["macro_f1"], 1e-12),
        "peft_trainable_fraction": peft["trainable_fraction"],
        "quality_warnings": len(warnings),
        "warnings": warnings,
    }
    ranking = board(params, parts, names, results)
    outputs = (METRICS, LEADERBOARD, TIMING, *(PLOTS / name for name in tables))
    with replaced_together(*outputs) as (metrics_file, board_file, timing_file, *table_files):
        write_json(metrics_file, summary)
        write_json(board_file, ranking)
        write_json(timing_file, {"test_ms_per_text": latency, "batch_size": params["evaluate"]["batch_size"],
                                 "machine": machine.describe()})
        for table, path in zip(tables.values(), table_files):
            write_csv(path, table)
    print(quality.report(summary))
    print(leaderboard.table(ranking, latency))
    quality.announce(warnings, "evaluate")
    if warnings and params["evaluate"]["fail_on_warning"]:
        sys.exit(f"error: {len(warnings)} quality warning(s) above and evaluate.fail_on_warning is true; the "
                 "metrics were written (metrics/evaluate.json) for you to read.")


if __name__ == "__main__":
    run_stage(main)
