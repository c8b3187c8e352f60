"""ONNX export, dynamic int8 quantization, and latency measurement of the three runtimes."""
import platform
import time
from pathlib import Path

import numpy as np
import torch

FP32_FILE = "model.onnx"
INT8_FILE = "model_quantized.onnx"
INFERENCE_FILE = "inference.json"  # how to tokenize for this model: what predict needs beyond the tokenizer


def export_onnx(model_dir, out_dir):
    """Export a saved classifier to out_dir/model.onnx with optimum-onnx (config and tokenizer beside it)."""
    from optimum.onnxruntime import ORTModelForSequenceClassification

    ORTModelForSequenceClassification.from_pretrained(model_dir, export=True).save_pretrained(out_dir)
    return Path(out_dir) / FP32_FILE


class LogitsOnly(torch.nn.Module):
    """input_ids, attention_mask -> logits: the whole graph a classifier needs, whatever wraps the model."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def export_onnx_traced(model, tokenizer, out_dir):
    """Export a model optimum has no recipe for (prompt or prefix tuning, bottleneck adapters) by tracing it
    with dynamic batch and sequence axes; its config and tokenizer go beside it, as optimum does."""
    out_dir = Path(out_dir)
    sample = tokenizer(["a sample text", "a second, longer sample text"], padding=True, return_tensors="pt")
    dynamic = {name: {0: "batch_size", 1: "sequence_length"} for name in ("input_ids", "attention_mask")}
    with torch.no_grad():
        torch.onnx.export(LogitsOnly(model.eval()), (sample["input_ids"], sample["attention_mask"]),
                          str(out_dir / FP32_FILE), input_names=["input_ids", "attention_mask"],
                          output_names=["logits"], dynamic_axes={**dynamic, "logits": {0: "batch_size"}},
                          opset_version=17, dynamo=False)
    model.config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir / FP32_FILE


def quantization_config():
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    if platform.machine().lower() in ("arm64", "aarch64"):
        return AutoQuantizationConfig.arm64(is_static=False)
    return AutoQuantizationConfig.avx2(is_static=False)


def quantize_int8(onnx_dir):
    """Dynamic int8 quantization of onnx_dir/model.onnx into onnx_dir/model_quantized.onnx."""
    from optimum.onnxruntime import ORTQuantizer

    ORTQuantizer.from_pretrained(onnx_dir, file_name=FP32_FILE).quantize(quantization_config(), save_dir=onnx_dir)
    return Path(onnx_dir) / INT8_FILE


def onnx_session(path):
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def onnx_logits(session, batch):
    names = {i.name for i in session.get_inputs()}
    feed = {key: np.asarray(value, dtype=np.int64) for key, value in batch.items() if key in names}
    if "token_type_ids" in names and "token_type_ids" not in feed:
        feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
    return session.run(None, feed)[0]


def onnx_predict(session, tokenizer, texts, max_length, batch_size=32, truncation="head"):
    """Predicted class ids for `texts`, in their order."""
    from stages.data import encode

    encoded = encode(texts, tokenizer, max_length, truncation)
    predictions = []
    for start in range(0, len(encoded["input_ids"]), batch_size):
        rows = {key: value[start:start + batch_size] for key, value in encoded.items()}
        predictions.append(onnx_logits(session, tokenizer.pad(rows, return_tensors="np")).argmax(axis=1))
    return np.concatenate(predictions)


def fixed_batch(tokenizer, texts, batch_size, max_length):
    """A batch padded and truncated to exactly max_length tokens, so every runtime times the same work."""
    texts = [texts[i % len(texts)] for i in range(batch_size)]
    return tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="np")


def mean_latency_ms(call, runs, warmup):
    for _ in range(warmup):
        call()
    started = time.perf_counter()
    for _ in range(runs):
        call()
    return (time.perf_counter() - started) / runs * 1000


def latencies(model, sessions, batch, runs, warmup):
    """Mean milliseconds per call of the PyTorch model and each ONNX session on the same batch."""
    torch_batch = {key: torch.from_numpy(np.asarray(value, dtype=np.int64)) for key, value in batch.items()}
    model.eval()

    def torch_call():
        with torch.inference_mode():
            model(**torch_batch)

    timings = {"pytorch_fp32": mean_latency_ms(torch_call, runs, warmup)}
    for name, session in sessions.items():
        timings[name] = mean_latency_ms(lambda: onnx_logits(session, batch), runs, warmup)
    return timings


def size_mb(path):
    return Path(path).stat().st_size / 2**20
