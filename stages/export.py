"""Stage 6: export the chosen model (by default the leaderboard's best) and measure it; a transformer goes to
ONNX and dynamic int8, and the int8 model is checked again against the fp32 one; the TF-IDF baseline ships as its
plain files."""
import shutil
import sys
from pathlib import Path

import numpy as np

from transfer import machine, modeling, strategies
from transfer.baselines import tfidf
from transfer.config import run_stage
from transfer.data import dataset
from transfer.evaluation import leaderboard, quality
from transfer.export import onnx_model
from transfer.export.card import concerns, int8_speed_note, model_card, settled_by_vocabulary
from transfer.outputs import read_json, replaced_together, write_json
from transfer.tasks.classification import classification_report

PRETRAINED = Path("models/pretrained")
PEFT_DIR = Path("models/peft")
BASELINE_DIR = Path("models/baseline")
OUT_DIR = Path("models/exported")
METRICS = Path("metrics/export.json")
TIMING = Path("metrics/timing/export.json")


def safetensors_mb(*folders):
    return sum(onnx_model.size_mb(path) for folder in folders for path in Path(folder).rglob("*.safetensors"))


def export_source(source, out, tokenizer):
    """Export the full fine-tune or the strategy's model into `out`; return (PyTorch model, its size in MB).

    A plain model (the fine-tune, or a strategy merged into one) goes through optimum-onnx (traced where it pools
    the mean); prompt and prefix tuning and bottleneck adapters have no plain form, so the assembled model is
    traced."""
    if source == "finetune":
        folder = Path("models/finetuned")
    elif read_json(PEFT_DIR / strategies.STRATEGY_FILE)["mergeable"]:
        folder = PEFT_DIR / "merged"
    else:
        model = strategies.load_adapted(PEFT_DIR, PRETRAINED)
        onnx_model.export_onnx_traced(model, tokenizer, out)
        return model, safetensors_mb(PRETRAINED, PEFT_DIR / "trained")
    onnx_model.export_onnx(folder, out)
    return modeling.load_saved_classifier(folder), safetensors_mb(folder)


def int8_check(labels, fp32, int8, names, max_recall_drop):
    """The int8 model's test predictions against the fp32 model's: agreement, macro-F1 change, recall drops."""
    before, after = (classification_report(labels, p, names) for p in (fp32, int8))
    drops = {name: round(before["per_class"][name]["recall"] - after["per_class"][name]["recall"], 4)
             for name in names if before["per_class"][name]["support"] > 0}
    over = {name: drop for name, drop in drops.items() if drop > max_recall_drop}
    check = {"agreement": round(float(np.mean(fp32 == int8)), 4),
             "macro_f1_change": round(after["macro_f1"] - before["macro_f1"], 4), "recall_drop": drops}
    warnings = [{"kind": "int8_recall_drop", "model": "int8", "classes": over, "max_recall_drop": max_recall_drop,
                 "message": f"int8 quantization lowered the test recall of {', '.join(map(repr, over))} by more than "
                            f"export.max_recall_drop={max_recall_drop} ({over}; predictions agree with fp32 on "
                            f"{check['agreement']:.1%} of texts). Ship model.onnx (fp32) instead, or quantize "
                            "fewer layers."}] if over else []
    return check, warnings


def export_transformer(source, out, params, parts, names):
    cfg, train_cfg = params["export"], params["train"]
    test = parts["test"]
    tokenizer = modeling.load_tokenizer(PRETRAINED)
    model, torch_mb = export_source(source, out, tokenizer)
    tokenizer.save_pretrained(out)  # the folder is a model a user can ship: ONNX files, config, tokenizer
    fp32_path = out / onnx_model.FP32_FILE
    sample = tokenizer(test["text"].head(4).tolist(), padding=True, truncation=True,
                       max_length=train_cfg["max_length"], return_tensors="np")
    fused = cfg["fuse_graph"] and onnx_model.fuse_graph(out, model.config.model_type, sample)
    calibration = onnx_model.calibration_batches(tokenizer, parts["train"], params)
    int8_path, int8_kind = onnx_model.quantize_int8(out, cfg["int8"], cfg["int8_per_channel"], calibration,
                                                    cfg["int8_smoothing"], cfg["int8_embedding_bits"])
    sessions = {"onnx_fp32": onnx_model.onnx_session(fp32_path), "onnx_int8": onnx_model.onnx_session(int8_path)}
    predictions = {name: onnx_model.onnx_predict(session, tokenizer, test["text"], train_cfg["max_length"],
                                                train_cfg["eval_batch_size"], train_cfg["truncation"])
                   for name, session in sessions.items()}
    labels = test["label"].to_numpy()
    check, warnings = int8_check(labels, predictions["onnx_fp32"], predictions["onnx_int8"], names,
                                 cfg["max_recall_drop"])
    latency = onnx_model.latency_table(model, sessions, tokenizer, test["text"].tolist(), cfg)
    write_json(out / onnx_model.INFERENCE_FILE, {"kind": "transformer", "max_length": train_cfg["max_length"],
                                                "truncation": train_cfg["truncation"]})
    sizes = {"pytorch_fp32": torch_mb, "onnx_fp32": onnx_model.size_mb(fp32_path),
             "onnx_int8": onnx_model.size_mb(int8_path)}
    accuracy = {name: float(np.mean(p == labels)) for name, p in predictions.items()}
    figures = {"test_accuracy": accuracy, "int8_check": check, "warnings": warnings,
               "onnx": {"fused_graph": fused, "int8_kernels": int8_kind, "int8_per_channel": cfg["int8_per_channel"],
                        "int8_smoothing": cfg["int8_smoothing"], "int8_embedding_bits": cfg["int8_embedding_bits"]},
               "size_mb": {name: round(mb, 2) for name, mb in sizes.items()},
               "int8_size_ratio": sizes["onnx_int8"] / sizes["pytorch_fp32"]}
    timing = {"latency_ms": latency, "latency_seq_length": cfg["latency_max_length"],
              "int8_speedup_batch1": latency["batch1"]["pytorch_fp32"] / latency["batch1"]["onnx_int8"],
              "int8_speedup_batch32": latency["batch32"]["pytorch_fp32"] / latency["batch32"]["onnx_int8"]}
    return figures, timing


def export_baseline(out, params, test, names):
    """The TF-IDF baseline ships as its plain files (no pickle, no ONNX: character n-grams do not convert)."""
    cfg = params["export"]
    shutil.copytree(BASELINE_DIR, out)
    write_json(out / onnx_model.INFERENCE_FILE, {"kind": "tfidf", "labels": names})
    model = tfidf.load(out)
    texts = test["text"].tolist()
    accuracy = float(np.mean(model.predict_proba(texts).argmax(axis=1) == test["label"].to_numpy()))
    latency = {}
    for batch_size in (1, 32):
        batch = [texts[i % len(texts)] for i in range(batch_size)]
        runs = max(1, cfg["latency_runs"] // (4 if batch_size > 1 else 1))
        ms = onnx_model.mean_latency_ms(lambda: model.predict_proba(batch), runs, cfg["latency_warmup"])
        latency[f"batch{batch_size}"] = {"baseline": round(ms, 2)}
    size = sum(onnx_model.size_mb(path) for path in out.iterdir())
    return {"test_accuracy": {"baseline": accuracy}, "warnings": [], "size_mb": {"baseline": round(size, 2)}}, \
        {"latency_ms": latency}


def main(params):
    cfg = params["export"]
    parts, names = dataset.load_prepared()
    board = read_json("metrics/leaderboard.json")
    exported = board["best"] if cfg["source"] == "best" else cfg["source"]
    data_metrics = settled_by_vocabulary(read_json("metrics/data.json"), read_json("metrics/pretrain.json"))
    evaluate_metrics = read_json("metrics/evaluate.json")
    with replaced_together(OUT_DIR, METRICS, TIMING) as (out, metrics_file, timing_file):
        if exported == "baseline":
            figures, timing = export_baseline(out, params, parts["test"], names)
        else:
            out.mkdir()
            figures, timing = export_transformer(exported, out, params, parts, names)
        summary = {"source": cfg["source"], "exported": exported,
                   "model": {"finetune": "full fine-tune", "peft": params["strategy"],
                             "baseline": "TF-IDF baseline"}[exported],
                   **figures}
        if exported != "baseline":  # the PyTorch model's, measured by evaluate, beside the ONNX ones
            summary["test_accuracy"] = {"pytorch_fp32": evaluate_metrics[exported]["accuracy"],
                                        **summary["test_accuracy"]}
            summary["int8_accuracy_drop"] = (summary["test_accuracy"]["pytorch_fp32"]
                                             - summary["test_accuracy"]["onnx_int8"])
        (out / "README.md").write_text(model_card(params, data_metrics, read_json("metrics/peft.json"),
                                                  evaluate_metrics, board, summary, timing), encoding="utf-8")
        write_json(metrics_file, summary)
        write_json(timing_file, {**timing, "machine": machine.describe()})
    print(quality.report(evaluate_metrics))
    print(leaderboard.table(board))
    runner_up, lead = leaderboard.margin(board, exported)
    print(f"export: {summary['model']} ({exported}; export.source: {cfg['source']}), validation macro-F1 "
          f"{board[exported]['val_macro_f1']:.4f}, {lead:+.4f} against {board[runner_up]['model']}; files in {OUT_DIR}/")
    int8_note = int8_speed_note(timing) if exported != "baseline" else None
    if int8_note:
        print(f"export: {int8_note.strip()}")
    quality.announce(summary["warnings"], "export")
    found = concerns(exported, data_metrics, evaluate_metrics) + summary["warnings"]
    if found:
        print(f"export: NOT RECOMMENDED: the exported model has {len(found)} quality warning(s): "
              + "; ".join(w["kind"] for w in found) + f". Its files are written; {OUT_DIR}/README.md says why.")
    if summary["warnings"] and params["evaluate"]["fail_on_warning"]:
        sys.exit(f"error: the int8 check warned and evaluate.fail_on_warning is true; {OUT_DIR} was written for "
                 "you to read.")


if __name__ == "__main__":
    run_stage(main)
