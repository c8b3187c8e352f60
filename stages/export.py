"""Stage 6: export the chosen model to ONNX and dynamic int8; measure size, accuracy and latency."""
from pathlib import Path

import numpy as np

from stages import data, exporting, modeling
from stages.config import run_stage
from stages.outputs import atomic_dir, read_json, write_json

SOURCES = {"peft": Path("models/peft/merged"), "finetune": Path("models/finetuned")}
OUT_DIR = Path("models/exported")


def main(params):
    cfg, train_cfg = params["export"], params["train"]
    source = SOURCES[cfg["source"]]
    parts, _ = data.load_prepared()
    test = parts["test"]
    tokenizer = modeling.load_tokenizer(source)
    with atomic_dir(OUT_DIR) as out:
        fp32_path = exporting.export_onnx(source, out)
        int8_path = exporting.quantize_int8(out)
        sessions = {"onnx_fp32": exporting.onnx_session(fp32_path), "onnx_int8": exporting.onnx_session(int8_path)}
        accuracy = {}
        for name, session in sessions.items():
            predictions = exporting.onnx_predict(session, tokenizer, test["text"], train_cfg["max_length"],
                                                 train_cfg["eval_batch_size"], train_cfg["truncation"])
            accuracy[name] = float(np.mean(predictions == test["label"].to_numpy()))
        model = modeling.load_saved_classifier(source)
        latency = {}
        for batch_size in (1, 32):
            batch = exporting.fixed_batch(tokenizer, test["text"].tolist(), batch_size, cfg["latency_max_length"])
            runs = max(1, cfg["latency_runs"] // (4 if batch_size > 1 else 1))
            timings = exporting.latencies(model, sessions, batch, runs, cfg["latency_warmup"])
            latency[f"batch{batch_size}"] = {name: round(ms, 2) for name, ms in timings.items()}
        sizes = {"pytorch_fp32": exporting.size_mb(source / "model.safetensors"),
                 "onnx_fp32": exporting.size_mb(fp32_path), "onnx_int8": exporting.size_mb(int8_path)}
    torch_accuracy = read_json("metrics/evaluate.json")[cfg["source"]]["accuracy"]
    write_json("metrics/export.json", {
        "source": cfg["source"],
        "test_accuracy": {"pytorch_fp32": torch_accuracy, **accuracy},
        "int8_accuracy_drop": torch_accuracy - accuracy["onnx_int8"],
        "size_mb": {name: round(mb, 2) for name, mb in sizes.items()},
        "int8_size_ratio": sizes["onnx_int8"] / sizes["pytorch_fp32"],
        "latency_ms": latency,
        "latency_seq_length": cfg["latency_max_length"],
        "int8_speedup_batch1": latency["batch1"]["pytorch_fp32"] / latency["batch1"]["onnx_int8"],
        "int8_speedup_batch32": latency["batch32"]["pytorch_fp32"] / latency["batch32"]["onnx_int8"],
    })
    print(f"export: int8 test accuracy {accuracy['onnx_int8']:.4f} (PyTorch {torch_accuracy:.4f}), "
          f"{sizes['onnx_int8']:.1f} MB, batch-1 latency {latency['batch1']}")


if __name__ == "__main__":
    run_stage(main)
