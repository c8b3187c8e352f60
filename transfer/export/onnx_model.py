"""ONNX export, dynamic int8 quantization, and latency measurement of the three runtimes."""
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from transfer.machine import cpu_flags

FP32_FILE = "model.onnx"
INT8_FILE = "model_quantized.onnx"
EMBEDDING_BLOCK = 32  # values per scale of a 4-bit word-embedding table (bench/int8_embeddings.md)
INFERENCE_FILE = "inference.json"  # how to tokenize for this model: what predict needs beyond the tokenizer


def export_onnx(model_dir, out_dir):
    """Export a saved classifier to out_dir/model.onnx with optimum-onnx (config and tokenizer beside it). A
    mean-pooled one (transfer/pooling.py) is traced instead: optimum would rebuild it with transformers' first-token
    pooler, whose weights it does not have."""
    from optimum.onnxruntime import ORTModelForSequenceClassification

    from transfer import modeling, pooling

    settings = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    if settings.get(pooling.CONFIG_KEY) == "mean":
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        return export_onnx_traced(modeling.load_saved_classifier(model_dir), modeling.load_tokenizer(model_dir),
                                  out_dir)
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


FUSABLE = {name: "bert" for name in ("bert", "roberta", "xlm-roberta", "distilbert", "electra", "camembert",
                                     "albert", "mpnet")}  # model types ORT's optimizer fuses with its BERT recipe


def int8_kind(kind="auto"):
    """The int8 kernel family to quantize for: the CPU's own for `auto` (VNNI where it has it), else as given."""
    if kind != "auto":
        return kind
    if platform.machine().lower() in ("arm64", "aarch64"):
        return "arm64"
    return "avx512_vnni" if "avx512_vnni" in cpu_flags() else "avx2"


def fuse_graph(onnx_dir, model_type, sample):
    """ORT's transformer fusions (attention, GELU, LayerNorm, ...) applied to onnx_dir/model.onnx in place, so that
    both the fp32 model and the int8 one made from it run fused kernels. The fused graph must give the unfused one's
    logits on `sample` (a tokenized batch); where it does not, or where ORT's optimizer has no recipe for the model
    type, the file stays as it was and this returns False."""
    from onnxruntime.transformers.optimizer import optimize_model

    if model_type not in FUSABLE:
        return False
    path = Path(onnx_dir) / FP32_FILE
    original = path.read_bytes()
    before = onnx_logits(onnx_session(path), sample)
    fused = optimize_model(str(path), model_type=FUSABLE[model_type], num_heads=0, hidden_size=0,
                           opt_level=0)  # the fusions alone: the session applies ORT's own optimizations on load
    fused.save_model_to_file(str(path))
    if not np.allclose(onnx_logits(onnx_session(path), sample), before, atol=1e-3):
        path.write_bytes(original)
        return False
    return True


def vocabulary_gather(model):
    """The Gather node that looks the model's input_ids up in a constant table (the word embeddings), or None."""
    tables = {t.name for t in model.graph.initializer if len(t.dims) == 2}
    return next((node for node in model.graph.node if node.op_type == "Gather" and node.input[0] in tables
                 and node.input[1] == "input_ids"), None)


def quantize_vocabulary(model, bits=4, block_size=EMBEDDING_BLOCK):
    """`model` with its word-embedding table stored in `bits`-bit blocks of `block_size` values along the hidden size,
    each block with its own scale and zero point (ORT's GatherBlockQuantized): the table is half of an int8 MiniLM
    and a lookup needs no int8 kernel, so 4 bits there take the int8 model from 25.5% of the fp32 size to about 20%.
    Returns the model unchanged where it has no such table."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    root.handlers[:] = handlers  # its import sets up the root logger at INFO (logging.basicConfig): undone
    root.setLevel(level)
    # it warns that it lifts the model to opset 21 and IR 10, which 4-bit tensors need; ORT runs the result
    logging.getLogger(MatMulNBitsQuantizer.__module__).setLevel(logging.ERROR)
    gather = vocabulary_gather(model)
    if gather is None:
        return model
    others = [node for node in model.graph.node if node.op_type == "Gather" and node is not gather]
    for number, node in enumerate(others):
        node.name = node.name or f"gather_{number}"
    # the position and token-type tables are small: they stay for the int8 quantizer
    quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=False,
                                     nodes_to_exclude=[node.name for node in others], op_types_to_quantize=("Gather",),
                                     quant_axes=(("Gather", 1),))
    quantizer.process()
    return quantizer.model.model


def quantize_int8(onnx_dir, kind="auto", per_channel=True, calibration=(), smoothing=0.0, embedding_bits=8,
                  embedding_block=EMBEDDING_BLOCK):
    """Dynamic int8 quantization of onnx_dir/model.onnx into onnx_dir/model_quantized.onnx for `kind`'s kernels
    (export.int8): signed weights, 8-bit where the CPU multiplies u8 by s8 without overflow (VNNI, ARM), 7-bit on AVX2
    without VNNI, whose u8 x s8 multiply-add sums each pair in 16 bits: 255 * 64 * 2 fits, 255 * 127 * 2 would
    saturate. Unsigned weights, which optimum's AVX2 config takes, avoid that too but go through a kernel that ran
    1.2x slower on an AVX2-only EPYC for the same logit error (python -m bench.inference). With `smoothing`
    (export.int8_smoothing) above 0, the outlier channels of the MatMul inputs, measured on `calibration` (tokenized
    batches), are smoothed first (transfer/export/smoothing.py); with `embedding_bits` 4 (export.int8_embedding_bits)
    the word-embedding table is stored in 4-bit blocks of `embedding_block` values (quantize_vocabulary). model.onnx
    itself stays as it is. Returns (path, kind)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from transfer.export import smoothing as outliers

    kind = int8_kind(kind)
    source, path = Path(onnx_dir) / FP32_FILE, Path(onnx_dir) / INT8_FILE
    prepared = Path(onnx_dir) / "model_before_int8.onnx"  # smoothed, or with the 4-bit table: removed when done
    smooth = smoothing > 0 and bool(calibration)
    if smooth or embedding_bits < 8:
        model = onnx.load(str(source))
        if smooth:
            model = outliers.smooth(model, outliers.activation_ranges(model, calibration), smoothing)[0]
        if embedding_bits < 8:
            model = quantize_vocabulary(model, embedding_bits, embedding_block)
        onnx.save(model, str(prepared))
        source = prepared
    try:
        quantize_dynamic(source, path, per_channel=per_channel, weight_type=QuantType.QInt8,
                         reduce_range=kind == "avx2",  # 7-bit weights: see above
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})  # types of the fused ops' outputs
    finally:
        prepared.unlink(missing_ok=True)
    return path, kind


def session_options():
    """Every graph optimisation ORT has, on as many threads as PyTorch uses, so the runtimes compare fairly; and
    no spinning: on 2 cores an idle worker that spins takes the core from the one at work (README.md,
    "Inference speed")."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def onnx_session(path):
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])


def onnx_feed(session, batch):
    """`batch` as the session takes it: its inputs alone, integers as int64, token_type_ids zero where missing."""
    names = {i.name for i in session.get_inputs()}
    feed = {key: np.asarray(value) for key, value in batch.items() if key in names}
    feed = {key: value.astype(np.int64) if value.dtype.kind in "iub" else value for key, value in feed.items()}
    if "token_type_ids" in names and "token_type_ids" not in feed:
        feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
    return feed


def onnx_logits(session, batch):
    return session.run(None, onnx_feed(session, batch))[0]


def padded_batches(tokenizer, texts, max_length, batch_size=32, truncation="head"):
    """`texts` tokenized as training does (train.truncation), in order, each batch padded to its longest text."""
    from transfer.data.dataset import encode

    encoded = encode(texts, tokenizer, max_length, truncation)
    for start in range(0, len(encoded["input_ids"]), batch_size):
        yield tokenizer.pad({key: value[start:start + batch_size] for key, value in encoded.items()},
                            return_tensors="np")


def calibration_batches(tokenizer, train, params):
    """The training texts export.int8_smoothing measures its ranges on (export.int8_calibration_texts of them),
    tokenized as the model trained."""
    cfg = params["train"]
    return list(padded_batches(tokenizer, train["text"].head(params["export"]["int8_calibration_texts"]),
                               cfg["max_length"], cfg["eval_batch_size"], cfg["truncation"]))


def onnx_predict(session, tokenizer, texts, max_length, batch_size=32, truncation="head"):
    """Predicted class ids for `texts`, in their order."""
    return np.concatenate([onnx_logits(session, batch).argmax(axis=1) for batch in
                           padded_batches(tokenizer, texts, max_length, batch_size, truncation)])


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


def latency_table(model, sessions, tokenizer, texts, cfg):
    """{batch1: {runtime: ms}, batch32: ...}: each runtime on the same fixed-length batch of `texts`, as params
    export says (latency_max_length, latency_runs, a quarter of them at batch 32, latency_warmup)."""
    latency = {}
    for batch_size in (1, 32):
        batch = fixed_batch(tokenizer, texts, batch_size, cfg["latency_max_length"])
        runs = max(1, cfg["latency_runs"] // (4 if batch_size > 1 else 1))
        timings = latencies(model, sessions, batch, runs, cfg["latency_warmup"])
        latency[f"batch{batch_size}"] = {name: round(ms, 2) for name, ms in timings.items()}
    return latency


def size_mb(path):
    return Path(path).stat().st_size / 2**20


def zipped_mb(path):
    """The file's size once compressed (zlib, level 6): what zeroed weights save in storage and download."""
    import zlib

    return len(zlib.compress(Path(path).read_bytes(), 6)) / 2**20
