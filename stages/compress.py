"""Stage: smaller models from the full fine-tune (params compress), each measured beside the fine-tune's own ONNX
fp32 and int8 in the same run: test accuracy and macro-F1, size, latency at batch 1 and 32.

- distilled: a student keeping compress.student_layers of the encoder layers (evenly spaced, the teacher's
  weights), trained on the teacher's soft labels and the true ones (transfer/export/compression.py);
- pruned: the fine-tune with the compress.sparsity share of its encoder weights zeroed (smallest magnitude
  first), trained on with the zeros held.

Each lands in models/compressed/<name> as a folder predict takes (`--model models/compressed/distilled`): the
PyTorch model, model.onnx, model_quantized.onnx, tokenizer. Off by default: it trains for minutes.
"""
import tempfile
from pathlib import Path

import torch

from transfer import machine, modeling
from transfer.config import run_stage
from transfer.data import dataset
from transfer.export import compression, onnx_model
from transfer.outputs import replaced_together, write_json
from transfer.strategies._layerwise import encoder_layers
from transfer.tasks.classification import classification_report
from transfer.training import checkpointing
from transfer.training.classifier import train_classifier, training_seed

PREPARED = Path("data/prepared")
FINETUNED = Path("models/finetuned")
OUT_DIR = Path("models/compressed")
METRICS = Path("metrics/compress.json")
TIMING = Path("metrics/timing/compress.json")
CHECKPOINTS = Path("checkpoints/compress")
OFF = ("# No compressed models\n\nparams.yaml has compress.distill and compress.prune false. Set either to true "
       "(`dvc exp run -S compress.distill=true`) for a smaller model beside the full fine-tune.\n")


def measure(model, onnx_dir, tokenizer, parts, names, params):
    """The PyTorch model and onnx_dir's model.onnx (quantized there to int8) on the test split: accuracy, macro-F1,
    sizes and latency, side by side."""
    cfg, train_cfg = params["export"], params["train"]
    fp32_path = Path(onnx_dir) / onnx_model.FP32_FILE
    calibration = onnx_model.calibration_batches(tokenizer, parts["train"], params)
    int8_path, _ = onnx_model.quantize_int8(onnx_dir, cfg["int8"], cfg["int8_per_channel"], calibration,
                                            cfg["int8_smoothing"], cfg["int8_embedding_bits"])
    sessions = {"onnx_fp32": onnx_model.onnx_session(fp32_path), "onnx_int8": onnx_model.onnx_session(int8_path)}
    texts, labels = parts["test"]["text"], parts["test"]["label"].to_numpy()
    predicted = {"pytorch_fp32": modeling.predict(model, tokenizer, texts, train_cfg["max_length"],
                                                  train_cfg["eval_batch_size"], train_cfg["truncation"]).argmax(axis=1)}
    for name, session in sessions.items():
        predicted[name] = onnx_model.onnx_predict(session, tokenizer, texts, train_cfg["max_length"],
                                                  train_cfg["eval_batch_size"], train_cfg["truncation"])
    reports = {name: classification_report(labels, p, names) for name, p in predicted.items()}
    model.cpu()  # trained or predicted on a GPU maybe; latency compares it with ONNX Runtime on the CPU, as export does
    return {"total_params": modeling.count_parameters(model)["total_params"],
            "zero_share": round(compression.zero_share(model), 4),
            "test_accuracy": {name: r["accuracy"] for name, r in reports.items()},
            "test_macro_f1": {name: round(r["macro_f1"], 4) for name, r in reports.items()},
            "size_mb": {name: round(onnx_model.size_mb(path), 2) for name, path in
                        (("onnx_fp32", fp32_path), ("onnx_int8", int8_path))},
            "zipped_mb": {name: round(onnx_model.zipped_mb(path), 2) for name, path in
                          (("onnx_fp32", fp32_path), ("onnx_int8", int8_path))}}, \
        onnx_model.latency_table(model, sessions, tokenizer, texts.tolist(), cfg)


def train(name, teacher, tokenizer, parts, params):
    """The variant `name` built from the teacher and trained on its soft labels; returns (model, results, timing)."""
    cfg = params["compress"]
    if name == "distilled":
        model, kept = compression.student_from(teacher, cfg["student_layers"])
        epochs, built = cfg["epochs"], {"teacher_layers_kept": kept}
    else:
        model = compression.pruned_copy(teacher, cfg["sparsity"])
        epochs, built = cfg["prune_epochs"], {}
    results, timing = train_classifier(
        model, tokenizer, parts, params, epochs, cfg["learning_rate"], CHECKPOINTS / name,
        trainer_class=compression.DistillingTrainer,
        trainer_options={"teacher": teacher, "temperature": cfg["temperature"], "alpha": cfg["alpha"]})
    results.pop("val_report")
    return compression.make_permanent(model), {**built, **results}, timing


def main(params):
    cfg = params["compress"]
    variants = [name for name, wanted in (("distilled", cfg["distill"]), ("pruned", cfg["prune"])) if wanted]
    if not variants:
        with replaced_together(OUT_DIR, METRICS, TIMING) as (out, metrics_file, timing_file):
            out.mkdir()
            (out / "README.md").write_text(OFF, encoding="utf-8")
            write_json(metrics_file, {"variants": []})
            write_json(timing_file, {})
        print("compress: off (compress.distill and compress.prune are false)")
        return
    parts, names = dataset.load_prepared(PREPARED)
    teacher = modeling.load_saved_classifier(FINETUNED)
    if cfg["distill"]:  # a student as deep as the teacher is refused before anything trains
        compression.kept_layers(len(encoder_layers(teacher)), cfg["student_layers"])
    checkpointing.claim(CHECKPOINTS, checkpointing.run_identity(params, [PREPARED, FINETUNED]),
                        params["checkpoints"]["resume"])
    tokenizer = modeling.load_tokenizer(FINETUNED)
    summary, timing = {"variants": variants}, {}
    with replaced_together(OUT_DIR, METRICS, TIMING) as (out, metrics_file, timing_file):
        out.mkdir()
        with tempfile.TemporaryDirectory() as scratch:
            onnx_model.export_onnx(FINETUNED, scratch)
            summary["teacher"], timing["teacher"] = measure(teacher, scratch, tokenizer, parts, names, params)
        for name in variants:
            torch.manual_seed(training_seed(params))
            model, results, train_timing = train(name, teacher, tokenizer, parts, params)
            modeling.save(model, tokenizer, out / name)
            onnx_model.export_onnx(out / name, out / name)
            write_json(out / name / onnx_model.INFERENCE_FILE, {"kind": "transformer", "truncation":
                       params["train"]["truncation"], "max_length": params["train"]["max_length"]})
            figures, latency = measure(model, out / name, tokenizer, parts, names, params)
            drop = summary["teacher"]["test_macro_f1"]["pytorch_fp32"] - figures["test_macro_f1"]["pytorch_fp32"]
            summary[name] = {**figures, "training": results, "macro_f1_drop": round(drop, 4),
                             "warnings": compression.drop_warnings(name, drop, cfg["max_f1_drop"])}
            teacher_ms, int8_ms = timing["teacher"]["batch32"], latency["batch32"]["onnx_int8"]
            timing[name] = {**latency, **train_timing,
                            "int8_speedup_batch32_vs_teacher_fp32": teacher_ms["pytorch_fp32"] / int8_ms,
                            "int8_speedup_batch32_vs_teacher_int8": teacher_ms["onnx_int8"] / int8_ms}
        write_json(metrics_file, summary)
        write_json(timing_file, {**timing, "machine": machine.describe()})
    checkpointing.finish(CHECKPOINTS)
    print(table(summary, timing))
    for name in variants:
        for warning in summary[name]["warnings"]:
            print(f"WARNING (compress): {warning['message']}")


def table(summary, timing):
    lines = ["| model | params | zero share | test macro-F1 (PyTorch / int8) | int8 MB (zipped) | "
             "int8 ms, batch 32 |", "|---|---:|---:|---:|---:|---:|"]
    for name in ["teacher", *summary["variants"]]:
        s, t = summary[name], timing[name]
        lines.append(f"| {name} | {s['total_params']:,} | {s['zero_share']:.0%} | "
                     f"{s['test_macro_f1']['pytorch_fp32']:.4f} / {s['test_macro_f1']['onnx_int8']:.4f} | "
                     f"{s['size_mb']['onnx_int8']:.1f} ({s['zipped_mb']['onnx_int8']:.1f}) | "
                     f"{t['batch32']['onnx_int8']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    run_stage(main)
