"""Stage: the TF-IDF + logistic-regression baseline, on the same train split, scored on validation and test.

Every transformer the run trains is compared with it (evaluate, the model card, the quality report)."""
import time
from pathlib import Path

from transfer import machine
from transfer.baselines import tfidf
from transfer.config import run_stage
from transfer.data import dataset
from transfer.outputs import replaced_together, write_json
from transfer.tasks.classification import classification_report

PREPARED = Path("data/prepared")
OUT_DIR = Path("models/baseline")
METRICS = Path("metrics/baseline.json")
TIMING = Path("metrics/timing/baseline.json")


def main(params):
    parts, names = dataset.load_prepared(PREPARED)
    started = time.perf_counter()
    model = tfidf.fit(parts["train"]["text"], parts["train"]["label"], len(names), params["baseline"], params["seed"])
    fit_seconds = time.perf_counter() - started
    results = {}
    for split in ("validation", "test"):
        predictions = model.predict_proba(parts[split]["text"]).argmax(axis=1)
        report = classification_report(parts[split]["label"].to_numpy(), predictions, names)
        results[split] = {key: report[key] for key in ("accuracy", "macro_f1")}
    with replaced_together(OUT_DIR, METRICS, TIMING) as (out, metrics_file, timing_file):
        tfidf.save(model, out)
        write_json(metrics_file, {"val_accuracy": results["validation"]["accuracy"],
                                  "val_macro_f1": results["validation"]["macro_f1"],
                                  "test_accuracy": results["test"]["accuracy"],
                                  "test_macro_f1": results["test"]["macro_f1"]})
        write_json(timing_file, {"fit_seconds": round(fit_seconds, 1), "machine": machine.describe()})
    print(f"baseline (TF-IDF + logistic regression): val macro-F1 {results['validation']['macro_f1']:.4f}, "
          f"test macro-F1 {results['test']['macro_f1']:.4f}, fitted in {fit_seconds:.1f} s")


if __name__ == "__main__":
    run_stage(main)
