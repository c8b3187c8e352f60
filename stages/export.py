"""Stage 6: export the chosen model to ONNX and dynamic int8; measure size, accuracy and latency."""
from pathlib import Path

import numpy as np

from stages import data, exporting, modeling, strategies
from stages.card import model_card
from stages.config import run_stage
from stages.outputs import read_json, replaced_together, write_json

PRETRAINED = Path("models/pretrained")
PEFT_DIR = Path("models/peft")
OUT_DIR = Path("models/exported")
METRICS = Path("metrics/export.json")
TIMING = Path("metrics/timing/export.json")


def safetensors_mb(*folders):
    return sum(exporting.size_mb(path) for folder in folders for path in Path(folder).rglob("*.safetensors"))


def export_source(source, out, tokenizer):
    """Export the full fine-tune or the strategy's model into `out`; return (PyTorch model, its size in MB).

    A plain model (the fine-tune, or a strategy merged into one) goes through optimum-onnx; prompt and
    prefix tuning and bottleneck adapters have no plain form, so the assembled model is traced."""
    if source == "finetune":
        folder = Path("models/finetuned")
    elif read_json(PEFT_DIR / strategies.STRATEGY_FILE)["mergeable"]:
        folder = PEFT_DIR / "merged"
    else:
        model = strategies.load_adapted(PEFT_DIR, PRETRAINED)
        exporting.export_onnx_traced(model, tokenizer, out)
        return model, safetensors_mb(PRETRAINED, PEFT_DIR / "trained")
    exporting.export_onnx(folder, out)
    return modeling.load_saved_classifier(folder), safetensors_mb(folder)


def main(params):
    cfg, train_cfg = params["export"], params["train"]
    parts, _ = data.load_prepared()
    test = parts["test"]
    tokenizer = modeling.load_tokenizer(PRETRAINED)
    with replaced_together(OUT_DIR, METRICS, TIMING) as (out, metrics_file, timing_file):
        out.mkdir()
        model, torch_mb = export_source(cfg["source"], out, tokenizer)
        tokenizer.save_pretrained(out)  # the folder is a model a user can ship: ONNX files, config, tokenizer
        fp32_path = out / exporting.FP32_FILE
        int8_path = exporting.quantize_int8(out)
        sessions = {"onnx_fp32": exporting.onnx_session(fp32_path), "onnx_int8": exporting.onnx_session(int8_path)}
        accuracy = {}
        for name, session in sessions.items():
            predictions = exporting.onnx_predict(session, tokenizer, test["text"], train_cfg["max_length"],
                                                 train_cfg["eval_batch_size"], train_cfg["truncation"])
            accuracy[name] = float(np.mean(predictions == test["label"].to_numpy()))
        latency = {}
        for batch_size in (1, 32):
            batch = exporting.fixed_batch(tokenizer, test["text"].tolist(), batch_size, cfg["latency_max_length"])
            runs = max(1, cfg["latency_runs"] // (4 if batch_size > 1 else 1))
            timings = exporting.latencies(model, sessions, batch, runs, cfg["latency_warmup"])
            latency[f"batch{batch_size}"] = {name: round(ms, 2) for name, ms in timings.items()}
        sizes = {"pytorch_fp32": torch_mb, "onnx_fp32": exporting.size_mb(fp32_path),
                 "onnx_int8": exporting.size_mb(int8_path)}
        evaluate_metrics = read_json("metrics/evaluate.json")
        torch_accuracy = evaluate_metrics[cfg["source"]]["accuracy"]
        summary = {
            "source": cfg["source"],
            "strategy": params["strategy"] if cfg["source"] == "peft" else "full fine-tune",
            "test_accuracy": {"pytorch_fp32": torch_accuracy, **accuracy},
            "int8_accuracy_drop": torch_accuracy - accuracy["onnx_int8"],
            "size_mb": {name: round(mb, 2) for name, mb in sizes.items()},
            "int8_size_ratio": sizes["onnx_int8"] / sizes["pytorch_fp32"],
        }
        timing = {  # measured on this machine: the one part of the stage's figures that differs run to run
            "latency_ms": latency,
            "latency_seq_length": cfg["latency_max_length"],
            "int8_speedup_batch1": latency["batch1"]["pytorch_fp32"] / latency["batch1"]["onnx_int8"],
            "int8_speedup_batch32": latency["batch32"]["pytorch_fp32"] / latency["batch32"]["onnx_int8"],
        }
        write_json(out / exporting.INFERENCE_FILE, {"max_length": train_cfg["max_length"],
                                                    "truncation": train_cfg["truncation"]})
        (out / "README.md").write_text(model_card(
            params, read_json("metrics/data.json"), read_json("metrics/peft.json"), evaluate_metrics, summary,
            timing), encoding="utf-8")
        write_json(metrics_file, summary)
        write_json(timing_file, timing)
    print(f"export: int8 test accuracy {accuracy['onnx_int8']:.4f} (PyTorch {torch_accuracy:.4f}), "
          f"{sizes['onnx_int8']:.1f} MB, batch-1 latency {latency['batch1']}")


if __name__ == "__main__":
    run_stage(main)
