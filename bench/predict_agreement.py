"""`python -m stages.predict` on the test split, as a user would run it, against the evaluate stage's predictions.

    python bench/predict_agreement.py      # after `dvc repro`; writes bench/predict_agreement.md

For the int8 and fp32 ONNX files of models/exported (or, where `export.source: best` shipped the TF-IDF baseline,
its plain files): labels returned, agreement with the evaluate stage's predictions of the same model
(metrics/plots/confusion_<model>.csv), and wall seconds of the whole command (process start and model load included).
"""
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent


def main():
    texts = pd.read_parquet(ROOT / "data/prepared/test.parquet")["text"]
    exported = json.loads((ROOT / "metrics/export.json").read_text())["exported"]
    evaluated = pd.read_csv(ROOT / f"metrics/plots/confusion_{exported}.csv")["predicted"].tolist()
    source = Path(tempfile.mkdtemp()) / "test_texts.txt"
    source.write_text("\n".join(texts) + "\n", encoding="utf-8")
    lines = [f"Exported model: `{exported}`.", "",
             "| file | texts | labels returned | agree with evaluate | wall seconds |", "|---|---:|---:|---:|---:|"]
    for precision in (("int8", "fp32") if exported != "baseline" else ("baseline files",)):
        started = time.perf_counter()
        choice = ["--precision", precision] if exported != "baseline" else []
        done = subprocess.run([sys.executable, "-m", "stages.predict", str(source), *choice],
                              cwd=ROOT, capture_output=True, text=True, check=True)
        seconds = time.perf_counter() - started
        labels = [line.split("\t")[0] for line in done.stdout.splitlines()]
        agree = sum(a == b for a, b in zip(labels, evaluated))
        lines.append(f"| {precision} | {len(texts)} | {len(labels)} | {agree} ({agree / len(texts):.1%}) | {seconds:.1f} |")
    report = "\n".join(lines)
    (ROOT / "bench/predict_agreement.md").write_text(
        f"# stages.predict vs the evaluate stage on the test split\n\nMeasured by `python bench/predict_agreement.py` "
        f"(2-core CPU).\n\n{report}\n")
    print(report)


if __name__ == "__main__":
    main()
