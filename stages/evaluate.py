"""Stage 5: the full fine-tune and the strategy's model side by side on the test split."""
from pathlib import Path

import pandas as pd

from stages import data, modeling, strategies
from stages.config import run_stage
from stages.metrics import classification_report, score_curves
from stages.outputs import read_json, replaced_together, write_csv, write_json

PRETRAINED = Path("models/pretrained")
PLOTS = Path("metrics/plots")
METRICS = Path("metrics/evaluate.json")


def main(params):
    parts, names = data.load_prepared()
    test = parts["test"]
    train_cfg = params["train"]
    results, per_class, tables = {}, [], {}
    tokenizer = modeling.load_tokenizer(PRETRAINED)
    models = {"finetune": modeling.load_saved_classifier("models/finetuned"),
              "peft": strategies.load_adapted("models/peft", PRETRAINED)}
    for key, model in models.items():
        probabilities = modeling.predict(model, tokenizer, test["text"], train_cfg["max_length"],
                                         params["evaluate"]["batch_size"], train_cfg["truncation"])
        predictions = probabilities.argmax(axis=1)
        results[key] = classification_report(test["label"].to_numpy(), predictions, names)
        curves = score_curves(test["label"].to_numpy(), probabilities)  # None when the test split has one class
        results[key]["roc_auc"] = curves and curves["roc_auc"]
        tables[f"roc_{key}.csv"] = pd.DataFrame(curves["roc"] if curves else {"fpr": [], "tpr": []})
        tables[f"precision_recall_{key}.csv"] = pd.DataFrame(
            curves["precision_recall"] if curves else {"recall": [], "precision": []})
        tables[f"confusion_{key}.csv"] = pd.DataFrame(
            {"actual": [names[i] for i in test["label"]], "predicted": [names[i] for i in predictions]})
        per_class += [{"row": f"{name} ({key})", "model": key, "class": name, **scores}
                      for name, scores in results[key]["per_class"].items()]
    tables["per_class.csv"] = pd.DataFrame(per_class)
    peft = read_json("metrics/peft.json")
    summary = {
        "test_rows": len(test),
        "strategy": params["strategy"],
        **results,
        "peft_macro_f1_vs_finetune": results["peft"]["macro_f1"] / max(results["finetune"]["macro_f1"], 1e-12),
        "peft_trainable_fraction": peft["trainable_fraction"],
    }
    with replaced_together(METRICS, *(PLOTS / name for name in tables)) as (metrics_file, *table_files):
        write_json(metrics_file, summary)
        for table, path in zip(tables.values(), table_files):
            write_csv(path, table)
    print(f"evaluate: test macro-F1 finetune {results['finetune']['macro_f1']:.4f}, "
          f"{params['strategy']} {results['peft']['macro_f1']:.4f}")


if __name__ == "__main__":
    run_stage(main)
