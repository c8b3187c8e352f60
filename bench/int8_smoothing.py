"""How far int8 moves a model's logits from fp32's, with and without outlier smoothing (export.int8_smoothing), on
the fine-tuned models of several data shapes, in one run.

    python -m bench.int8_smoothing                 # the default run's model, and bench/quality.py's where present
    python -m bench.int8_smoothing --strengths 0,0.3,0.5,0.7,1.0

Each model is exported to ONNX fp32, then quantized as the export stage does (export.int8: auto, per-channel,
calibrated on export.int8_calibration_texts training texts) at each smoothing strength (0 = none). Reported per
model and strength: the root-mean-square distance of the int8 logits from fp32's and the labels that flip, on
the validation split (where a strength is chosen) and on the test split (where accuracy is only reported).
Writes bench/results/int8_smoothing.json and bench/int8_smoothing.md.
"""
import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

from bench.inference import cpu
from transfer import modeling
from transfer.data import dataset
from transfer.export import onnx_model
from transfer.outputs import write_json

ROOT = Path(__file__).resolve().parent.parent
RESULTS, TABLE = ROOT / "bench/results/int8_smoothing.json", ROOT / "bench/int8_smoothing.md"


def models():
    """{name: (model folder, prepared data folder)}: the default run's fine-tune, and bench/quality.py's."""
    found = {"imdb": (ROOT / "models/finetuned", ROOT / "data/prepared")}
    for run in sorted((ROOT / "bench/runs/quality").glob("*/models/finetuned")):
        found[run.parent.parent.name] = (run, run.parent.parent / "data/prepared")
    return {name: paths for name, paths in found.items() if all(p.exists() for p in paths)}


def logits(path, batches):
    session = onnx_model.onnx_session(path)
    return np.concatenate([onnx_model.onnx_logits(session, batch) for batch in batches])


def measure(model_dir, data_dir, variants, export, train, scratch):
    """{variant: figures} of `model_dir` exported to ONNX fp32 and quantized once per variant ({name: keyword
    arguments of onnx_model.quantize_int8 beyond export.int8 and export.int8_per_channel}), calibrated as the export
    stage calibrates."""
    tokenizer = modeling.load_tokenizer(model_dir)
    parts = dataset.load_prepared(data_dir)[0]

    def batches(frame):
        return list(onnx_model.padded_batches(tokenizer, frame["text"], train["max_length"], 32, train["truncation"]))
    calibration = batches(parts["train"].head(export["int8_calibration_texts"]))
    splits = {split: (batches(parts[split]), parts[split]["label"].to_numpy()) for split in ("validation", "test")}
    fp32_dir = scratch / "fp32"
    onnx_model.export_onnx(model_dir, fp32_dir)
    fp32_mb = onnx_model.size_mb(fp32_dir / onnx_model.FP32_FILE)
    reference = {split: logits(fp32_dir / onnx_model.FP32_FILE, b) for split, (b, _) in splits.items()}
    rows = {"fp32_mb": round(fp32_mb, 2),
            "fp32_test_accuracy": round(float(np.mean(reference["test"].argmax(1) == splits["test"][1])), 4)}
    for number, (name, options) in enumerate(variants.items()):
        folder = shutil.copytree(fp32_dir, scratch / f"int8_{number}")
        path, _ = onnx_model.quantize_int8(folder, export["int8"], export["int8_per_channel"], calibration, **options)
        row = {"mb": round(onnx_model.size_mb(path), 2), "of_fp32": round(onnx_model.size_mb(path) / fp32_mb, 4)}
        for split, (b, labels) in splits.items():
            int8 = logits(path, b)
            row[f"{split}_logit_rms_error"] = round(float(np.sqrt(np.mean((int8 - reference[split]) ** 2))), 4)
            row[f"{split}_flips"] = int(np.sum(int8.argmax(1) != reference[split].argmax(1)))
        row["test_accuracy"] = round(float(np.mean(int8.argmax(1) == labels)), 4)
        row["texts"] = {split: len(labels) for split, (_, labels) in splits.items()}
        rows[name] = row
    return rows


def run(result, variants, results_path, table_path, markdown):
    """Every model of models() through measure(), into result["models"]; writes the JSON and the markdown table."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, (model_dir, data_dir) in models().items():
        with tempfile.TemporaryDirectory() as scratch:
            result["models"][name] = measure(model_dir, data_dir, variants, params["export"], params["train"],
                                             Path(scratch))
        print(name, result["models"][name], flush=True)
    write_json(results_path, result, exact=True)
    table_path.write_text(markdown(result))
    print(table_path.read_text())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strengths", default="0,0.3,0.5,0.7,1.0")
    args = parser.parse_args()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    strengths = [float(s) for s in args.strengths.split(",")]
    result = {"cpu": cpu(), "torch": torch.__version__, "strengths": strengths,
              "max_length": params["train"]["max_length"], "models": {},
              "command": f"python -m bench.int8_smoothing --strengths {args.strengths}"}
    run(result, {f"{strength:g}": {"smoothing": strength} for strength in strengths}, RESULTS, TABLE, markdown)


def markdown(r):
    names = list(r["models"])
    lines = [f"`{r['command']}` on {r['cpu']['name']} (AVX-512 VNNI: {'yes' if r['cpu']['avx512_vnni'] else 'no'}), "
             f"torch {r['torch']}, {r['max_length']} tokens. Each cell: the int8 logits' RMS distance from fp32's on "
             "the validation split / labels flipped there / test accuracy (fp32's in the header).", "",
             "| smoothing | " + " | ".join(f"{n} (fp32 {r['models'][n]['fp32_test_accuracy']})" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for strength in r["strengths"]:
        cells = [r["models"][n][f"{strength:g}"] for n in names]
        lines.append(f"| {strength:g} | " + " | ".join(
            f"{c['validation_logit_rms_error']} / {c['validation_flips']} / {c['test_accuracy']}" for c in cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
