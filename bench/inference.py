"""Inference side by side: PyTorch fp32 eager, ONNX fp32 and ONNX int8, on this CPU, in one run.

    python -m bench.inference                      # the fine-tuned model of the last run (models/finetuned)
    python -m bench.inference --model DIR --texts 400 --seconds 2

Each runtime is timed with torch.utils.benchmark (median and interquartile range over blocked runs) at batch 1 and
32, at 128 tokens and at the test reviews' real lengths (dynamic padding, up to train.max_length). The models
compared: ONNX fp32 as optimum exports it and with ONNX Runtime's transformer fusions (attention, GELU, LayerNorm);
int8 as the export stage made it before (optimum's AVX2 config on the unfused graph); and int8 for this CPU's
kernels (export.int8: auto), per-channel or per-tensor weights, from the unfused and the fused graph. The
int8 and fp32 GEMMs at the model's FFN shape are timed in the same run, so each speed-up reads against what this
CPU's int8 units can give. Writes bench/results/inference.json and bench/inference.md; the last run on a CPU
with the other kind of int8 kernels (VNNI or not) stays in both, under other_cpus.
"""
import argparse
import json
import platform
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils import benchmark

from transfer import machine, modeling
from transfer.data import dataset
from transfer.export import onnx_model
from transfer.outputs import write_json
from transfer.training import cpu_matmul

ROOT = Path(__file__).resolve().parent.parent
RESULTS, TABLE = ROOT / "bench/results/inference.json", ROOT / "bench/inference.md"


def cpu():
    flags = machine.cpu_flags()
    return {"name": machine.cpu_name(), "generation": machine.cpu_model(),  # two EPYCs here were both "AMD EPYC"
            "machine": platform.machine(), "threads": torch.get_num_threads(),
            "avx2": "avx2" in flags, "avx512f": "avx512f" in flags, "avx512_vnni": "avx512_vnni" in flags,
            "amx_int8": "amx_int8" in flags, "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags}


def on_this_cpu(path):
    """Where a bench writes `path` on this CPU: as named on one with AVX-512 VNNI (most of the README's figures), with
    _avx512 or _avx2 before the suffix on one without, so that one CPU's run leaves another's results standing."""
    machine = cpu()
    kind = "" if machine["avx512_vnni"] else "_avx512" if machine["avx512f"] else "_avx2"
    return path.with_name(f"{path.stem}{kind}{path.suffix}")


COMPARE_SMOOTHING = "0.3,0.5,0.7,1.0"


def timed(call, seconds):
    """Median and interquartile range, in milliseconds, of blocked runs over at least `seconds`."""
    call()  # warm-up: first-call allocations and ORT's kernel choice stay out of the figure
    measurement = benchmark.Timer(stmt="call()", globals={"call": call}, num_threads=torch.get_num_threads()  # its default is 1
                                  ).blocked_autorange(min_run_time=seconds)
    return {"median_ms": round(measurement.median * 1000, 2), "iqr_ms": round(measurement.iqr * 1000, 2),
            "runs": len(measurement.times) * measurement.number_per_run}


def gemm(seconds, m=4096, k=384, n=1536):
    """fp32 GEMM in PyTorch (its own, and oneDNN's: compute.cpu_matmul) against ORT's int8 MatMulInteger at the
    FFN's shape (batch 32 x 128 tokens); the int8 speed-up reads against the faster fp32 one."""
    import onnxruntime
    from onnx import TensorProto, helper

    a, b = torch.randn(m, k), torch.randn(k, n)
    fp32_native = timed(lambda: a @ b, seconds)
    fp32_onednn = None
    if cpu_matmul.available():
        weight = b.t().contiguous()
        fp32_onednn = timed(lambda: cpu_matmul.matmul_transposed(a, weight), seconds)
    fp32 = min(filter(None, (fp32_native, fp32_onednn)), key=lambda timing: timing["median_ms"])
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "gemm",
                              [helper.make_tensor_value_info("A", TensorProto.UINT8, [m, k]),
                               helper.make_tensor_value_info("B", TensorProto.INT8, [k, n])],
                              [helper.make_tensor_value_info("Y", TensorProto.INT32, [m, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = onnxruntime.InferenceSession(model.SerializeToString(), onnx_model.session_options(),
                                           providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {"A": rng.integers(0, 255, (m, k), dtype=np.uint8), "B": rng.integers(-127, 127, (k, n), dtype=np.int8)}
    int8 = timed(lambda: session.run(None, feed), seconds)
    flops = 2 * m * k * n
    return {"shape": [m, k, n], "fp32_torch": fp32_native, "fp32_onednn": fp32_onednn, "int8_ort": int8,
            "fp32_torch_gflops": round(flops / fp32_native["median_ms"] / 1e6, 1),
            "fp32_gflops": round(flops / fp32["median_ms"] / 1e6, 1),
            "int8_gops": round(flops / int8["median_ms"] / 1e6, 1),
            "int8_gemm_speedup": round(fp32["median_ms"] / int8["median_ms"], 2)}


def build(fp32_dir, out, model_type, sample, calibration, fuse, int8=None, per_channel=True, smoothing=0.0,
          embedding_bits=8):
    """A copy of the fp32 export, fused or not, then quantized or not (outliers smoothed or not): returns the model
    file to time."""
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    shutil.copytree(fp32_dir, out)
    if fuse:
        assert onnx_model.fuse_graph(out, model_type, sample), f"no fusions kept for {model_type}"
    if int8 == "previous":  # what the export stage did until now: optimum's AVX2 config, unfused graph
        config = AutoQuantizationConfig.avx2(is_static=False)
        ORTQuantizer.from_pretrained(out, file_name=onnx_model.FP32_FILE).quantize(config, save_dir=out)
        return Path(out) / onnx_model.INT8_FILE
    if not int8:
        return Path(out) / onnx_model.FP32_FILE
    if int8 == "avx2_unsigned":  # what the export stage made for AVX2 until it took 7-bit signed weights
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        path = Path(out) / onnx_model.INT8_FILE
        quantize_dynamic(Path(out) / onnx_model.FP32_FILE, path, per_channel=per_channel, weight_type=QuantType.QUInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        return path
    return onnx_model.quantize_int8(out, int8, per_channel, calibration, smoothing, embedding_bits)[0]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="models/finetuned")
    parser.add_argument("--texts", type=int, default=500, help="test texts for the accuracy check")
    parser.add_argument("--seconds", type=float, default=2.0, help="minimum timed seconds per figure")
    parser.add_argument("--max-length", type=int, default=256, help="real-length batches: train.max_length")
    export = yaml.safe_load((ROOT / "params.yaml").read_text())["export"]
    parser.add_argument("--fuse", action=argparse.BooleanOptionalAction, default=export["fuse_graph"],
                        help="the int8 the summary keys describe: export.fuse_graph unless given")
    parser.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=export["int8_per_channel"],
                        help="the same, for export.int8_per_channel")
    parser.add_argument("--smoothing", type=float, default=export["int8_smoothing"],
                        help="the same, for export.int8_smoothing (0: none)")
    parser.add_argument("--embedding-bits", type=int, choices=(4, 8), default=export["int8_embedding_bits"],
                        help="the same, for export.int8_embedding_bits (the other is built and timed too)")
    parser.add_argument("--compare-smoothing", default=COMPARE_SMOOTHING,
                        help="outlier-smoothing strengths also built and timed (int8_<kernels>_smoothed_<strength>)")
    args = parser.parse_args()
    machine = cpu()
    scratch = Path(tempfile.mkdtemp(prefix="bench-inference-"))
    tokenizer = modeling.load_tokenizer(args.model)
    model = modeling.load_saved_classifier(Path(args.model)).eval()
    fp32_path = onnx_model.export_onnx(args.model, scratch / "fp32")
    kind, model_type = onnx_model.int8_kind("auto"), model.config.model_type
    # the int8 the summary keys describe: as the export stage would build it from params.yaml's export section
    shipped = (f"int8_{kind}_smoothed_{args.smoothing:g}" if args.smoothing else
               f"int8_{kind}{'_fused' if args.fuse else ''}{'' if args.per_channel else '_per_tensor'}")
    builds = {"onnx_fp32_fused": (True, None, True), "int8_previous": (False, "previous", True),
              f"int8_{kind}": (False, kind, True), f"int8_{kind}_per_tensor": (False, kind, False),
              **({"int8_avx2_unsigned": (False, "avx2_unsigned", True)} if kind == "avx2" else {}),
              f"int8_{kind}_fused": (True, kind, True), f"int8_{kind}_fused_per_tensor": (True, kind, False),
              **{f"int8_{kind}_smoothed_{strength:g}": (False, kind, True, strength)
                 for strength in sorted({*map(float, args.compare_smoothing.split(",")), args.smoothing} - {0.0})},
              f"{shipped}_embeddings4": (args.fuse, kind, args.per_channel, args.smoothing, 4)}
    parts = dataset.load_prepared()[0]
    test = parts["test"].head(args.texts)
    sample = tokenizer(test["text"].head(4).tolist(), padding=True, truncation=True, max_length=args.max_length,
                       return_tensors="np")
    calibration = list(onnx_model.padded_batches(tokenizer, parts["train"]["text"].head(export["int8_calibration_texts"]),
                                                 args.max_length, 32, "head_tail"))  # as the export stage calibrates
    paths = {"onnx_fp32": fp32_path, **{name: build(scratch / "fp32", scratch / name, model_type, sample, calibration,
                                                    *how) for name, how in builds.items()}}
    sessions = {name: onnx_model.onnx_session(path) for name, path in paths.items()}

    labels = test["label"].to_numpy()
    encoded = dataset.encode(test["text"], tokenizer, args.max_length, "head_tail")
    predictions = {name: onnx_model.onnx_predict(session, tokenizer, test["text"], args.max_length,
                                                truncation="head_tail") for name, session in sessions.items()}
    accuracy = {name: round(float(np.mean(p == labels)), 4) for name, p in predictions.items()}
    agreement = {name: round(float(np.mean(p == predictions["onnx_fp32"])), 4) for name, p in predictions.items()}
    validation = list(onnx_model.padded_batches(tokenizer, parts["validation"]["text"], args.max_length, 32,
                                                "head_tail"))
    val_logits = {name: np.concatenate([onnx_model.onnx_logits(session, batch) for batch in validation])
                  for name, session in sessions.items()}
    logit_error = {name: round(float(np.sqrt(np.mean((logits - val_logits["onnx_fp32"]) ** 2))), 4)
                   for name, logits in val_logits.items()}  # how far each model's logits move from fp32's
    lengths = sorted(range(len(encoded["input_ids"])), key=lambda i: len(encoded["input_ids"][i]))
    median_text = lengths[len(lengths) // 2]
    batches = {"b1_128": onnx_model.fixed_batch(tokenizer, test["text"].tolist(), 1, 128),
               "b32_128": onnx_model.fixed_batch(tokenizer, test["text"].tolist(), 32, 128),
               "b1_real": tokenizer.pad({k: v[median_text:median_text + 1] for k, v in encoded.items()},
                                        return_tensors="np"),
               "b32_real": tokenizer.pad({k: v[:32] for k, v in encoded.items()}, return_tensors="np")}
    timings = {}
    for shape, batch in batches.items():
        as_torch = {k: torch.from_numpy(np.asarray(v, dtype=np.int64)) for k, v in batch.items()}

        def torch_call(onednn=False):
            with torch.inference_mode(), cpu_matmul.onednn_linear(onednn):
                model(**as_torch)
        timings[shape] = {"tokens": list(np.asarray(batch["input_ids"]).shape),
                          "pytorch_fp32": timed(torch_call, args.seconds),
                          **({"pytorch_fp32_onednn": timed(lambda: torch_call(True), args.seconds)}
                             if cpu_matmul.available() else {}),
                          **{name: timed(lambda s=session: onnx_model.onnx_logits(s, batch), args.seconds)
                             for name, session in sessions.items()}}
    gemms = gemm(args.seconds)
    size = {name: round(onnx_model.size_mb(path), 1) for name, path in paths.items()}
    chosen = f"{shipped}_embeddings4" if args.embedding_bits == 4 else shipped

    fp32 = "onnx_fp32_fused" if args.fuse else "onnx_fp32"  # the fp32 model the export ships beside the int8 one

    def speedup(shape, over, name=chosen):
        return round(timings[shape][over]["median_ms"] / timings[shape][name]["median_ms"], 2)
    result = {"cpu": machine, "cpu_vnni": machine["avx512_vnni"], "int8_kernels": kind, "torch": torch.__version__, "model": args.model,
              "test_texts": len(test), "exported_int8": chosen, "size_mb": size,
              "pytorch_threads": torch.get_num_threads(),  # what timed() runs PyTorch on
              "int8_size_fraction": round(size[chosen] / size["onnx_fp32"], 3), "accuracy": accuracy,
              "agreement_with_fp32": agreement, "validation_texts": len(parts["validation"]),
              "validation_logit_rms_error": logit_error,
              "int8_accuracy_change": round(accuracy[chosen] - accuracy[fp32], 4), "onnx_fp32_shipped": fp32,
              "int8_speedup_vs_torch_b32": speedup("b32_128", "pytorch_fp32"),
              "int8_speedup_vs_torch_onednn_b32": (speedup("b32_128", "pytorch_fp32_onednn")
                                                   if "pytorch_fp32_onednn" in timings["b32_128"] else None),
              "int8_speedup_vs_torch_b1": speedup("b1_128", "pytorch_fp32"),
              "int8_speedup_vs_onnx_fp32_b32": speedup("b32_128", fp32),
              "int8_speedup_vs_onnx_fp32_b1": speedup("b1_128", fp32),
              "int8_speedup_vs_previous_int8_b32": speedup("b32_128", "int8_previous"),
              "int8_speedup_vs_torch_b32_real": speedup("b32_real", "pytorch_fp32"),
              "int8_gemm_speedup": gemms["int8_gemm_speedup"], "gemm": gemms, "latency": timings,
              "embedding_bits": args.embedding_bits,
              "command": f"python -m bench.inference --texts {args.texts}" + (
                  "" if args.compare_smoothing == COMPARE_SMOOTHING else f" --compare-smoothing {args.compare_smoothing}")
              + ("" if args.seconds == 2.0 else f" --seconds {args.seconds:g}")}
    result["other_cpus"] = earlier_runs_on_other_cpus(kind)
    write_json(RESULTS, result, exact=True)
    TABLE.write_text("\n".join(markdown(run) for run in [result, *result["other_cpus"].values()]))
    print(markdown(result))
    shutil.rmtree(scratch)


def earlier_runs_on_other_cpus(kind):
    """The last run on each other kind of int8 kernels (VNNI or not), kept beside this CPU's: one file, every CPU."""
    if not RESULTS.exists():
        return {}
    earlier = json.loads(RESULTS.read_text())
    runs = {**earlier.pop("other_cpus", {}), earlier["int8_kernels"]: earlier}
    return {name: run for name, run in runs.items() if name != kind}


def markdown(r):
    c = r["cpu"]
    names = ["pytorch_fp32", *(["pytorch_fp32_onednn"] if "pytorch_fp32_onednn" in r["latency"]["b1_128"] else []),
             *r["size_mb"]]
    generation = f"{c['generation']}, " if c.get("generation") else ""
    lines = [f"`{r['command']}` on {c['name']} ({generation}{c['machine']}, {c['threads']} threads, AVX-512 VNNI: "
             f"{'yes' if c['avx512_vnni'] else 'no'}), torch {r['torch']}, model `{r['model']}`. Median ms per "
             "call (interquartile range); real = the test reviews tokenized up to 256 tokens, dynamic padding. Accuracy on "
             "the test texts; logit error: root-mean-square distance of the logits from onnx_fp32's on the "
             f"{r.get('validation_texts', '?')} validation texts.", "",
             "| runtime | size MB | accuracy | same label as fp32 | logit error | " + " | ".join(f"{s} ({'×'.join(map(str, t['tokens']))})"
                                                        for s, t in r["latency"].items()) + " |",
             "|---|---|---|---|---|" + "---|" * len(r["latency"])]
    for name in names:
        cells = [f"{t[name]['median_ms']} ({t[name]['iqr_ms']})" for t in r["latency"].values()]
        lines.append(f"| {name}{' (exported)' if name == r['exported_int8'] else ''} | "
                     f"{r['size_mb'].get(name, '')} | {r['accuracy'].get(name, '')} | "
                     f"{r['agreement_with_fp32'].get(name, '')} | {r.get('validation_logit_rms_error', {}).get(name, '')} | "
                     + " | ".join(cells) + " |")
    g = r["gemm"]
    lines += ["", f"Exported int8 (`{r['exported_int8']}`): {r['int8_speedup_vs_torch_b32']}× PyTorch fp32 at batch "
              f"32 × 128 ({r['int8_speedup_vs_torch_b32_real']}× at real lengths), {r['int8_speedup_vs_onnx_fp32_b32']}× "
              f"ONNX fp32 (`{r['onnx_fp32_shipped']}`) at batch 32 and {r['int8_speedup_vs_onnx_fp32_b1']}× at batch 1, "
              f"{r['int8_speedup_vs_previous_int8_b32']}× the previous export's int8 at batch 32; "
              f"{r['int8_size_fraction']:.0%} of the fp32 size; accuracy change {r['int8_accuracy_change']:+.4f} on "
              f"{r['test_texts']} test texts.",
              f"GEMM {'×'.join(map(str, g['shape']))} in the same run: PyTorch fp32 {g['fp32_torch']['median_ms']} ms "
              f"({g.get('fp32_torch_gflops', g['fp32_gflops'])} GFLOP/s), "
              + (f"oneDNN fp32 {g['fp32_onednn']['median_ms']} ms, " if g.get("fp32_onednn") else "")
              + f"ORT int8 MatMulInteger {g['int8_ort']['median_ms']} ms ({g['int8_gops']} GOP/s): int8 over the "
              f"faster fp32 {g['int8_gemm_speedup']}×, the most int8 can give on this CPU where the model is all GEMM.",
              ""]
    if "pytorch_threads" not in r:
        lines[-1:] = ["**This run timed PyTorch on one thread** (torch.utils.benchmark's default, a bug of the bench "
                      f"then), ONNX Runtime on {c['threads']}: its PyTorch latencies, the speed-ups over them and the "
                      "GEMM ratio overstate int8's gain. Re-run it on that CPU.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
