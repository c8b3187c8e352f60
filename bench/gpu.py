"""The fine-tune and inference on a CUDA GPU, side by side in one run: python -m bench.gpu

- peak: the GPU's bf16 GEMM rate (8192 x 8192 x 8192), measured here; MFU reads against it.
- naive: bench.finetune's naive set-up on the GPU: a plain PyTorch loop as the seeds wrote it (fp32, TF32 off, every
  text padded to the fixed length and tokenized inside the Dataset's __getitem__, AdamW).
- pipeline: bench.finetune's pipeline set-up, train_classifier as the finetune stage calls it (params.yaml:
  compute.precision auto = bf16 autocast on a GPU that has it, dynamic padding, length-grouped batches, validation
  passes, checkpoints).
- inference: the classifier's forward at batch 1 and 32 x 128 tokens, fp32 and bf16 autocast (median ms,
  torch.utils.benchmark, which synchronises the GPU).

The shapes are bench.finetune's (short: the first two sentences, 128 tokens; full: whole reviews, 256), on the
prepared split (`dvc repro prepare`). Seconds run from raw texts to a trained model, the validation rows included.
`--random-weights DIR` builds the encoder of the model folder DIR (its config and tokenizer; no weights needed) with
random weights: speed, MFU and memory are those of the real model, macro-F1 is not reported then. Writes
bench/results/gpu.json and bench/gpu.md.
"""
import argparse
import gc
import tempfile
import time

import torch
from torch.utils import benchmark

from bench.finetune import SHAPES, rows, run_naive, run_pipeline
from bench.throughput import ROOT, FlopCounter, ratio, with_mfu
from transfer import modeling
from transfer.config import load_params
from transfer.outputs import write_json


def bf16_peak(size=8192):
    a, b = (torch.randn(size, size, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    timer = benchmark.Timer(stmt="a @ b", globals={"a": a, "b": b})
    timer.timeit(3)
    return round(2 * size ** 3 / timer.blocked_autorange(min_run_time=1.0).median / 1e12, 1)


def trained(method, shape, source, tokenizer, args):
    torch.manual_seed(args.seed)
    parts, names = rows(shape, getattr(args, f"{shape}_train"), args.val, 0)
    # as bench.finetune: the pipeline with its params' train.attention_dropout, the naive loop with the model's
    dropout = load_params(ROOT / "params.yaml")["train"]["attention_dropout"] if method == "pipeline" else None
    model = modeling.load_classifier(source, names, attention_dropout=dropout)
    counter = FlopCounter(model)
    if method == "naive":
        model.cuda()
        torch.backends.cuda.matmul.allow_tf32 = False  # PyTorch's default, which a pipeline run before switched on
    gc.collect()  # the run before's trainer and model hold each other: freed only by the cycle collector
    torch.cuda.empty_cache()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    f1 = (run_naive if method == "naive" else run_pipeline)(model, tokenizer, parts, SHAPES[shape], args)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    report = {"seconds": round(seconds, 2), "samples_per_second": round(len(parts["train"]) / seconds, 1),
              **counter.report(seconds), "peak_gpu_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20)}
    if not args.random_weights:
        report["val_macro_f1"] = round(f1, 4)
    return report, model


def forward_ms(model, tokenizer, batch_size, precision):
    batch = tokenizer(["word " * 200] * batch_size, padding="max_length", truncation=True, max_length=128,
                      return_tensors="pt").to("cuda")
    model.cuda().eval()
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 as PyTorch's default runs it; the pipeline's runs set TF32

    def call():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
            model(**batch)

    timer = benchmark.Timer(stmt="call()", globals={"call": call})
    timer.timeit(5)
    return round(timer.blocked_autorange(min_run_time=1.0).median * 1e3, 2)


def randomly_initialised(folder, out):
    """`folder`'s encoder (config, tokenizer, sentence-transformers files) with random weights, saved in `out`."""
    import shutil

    from transformers import AutoConfig, AutoModel

    shutil.copytree(folder, out, dirs_exist_ok=True)
    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.from_pretrained(folder)).save_pretrained(out)
    return str(out)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--short-train", type=int, default=4000)
    parser.add_argument("--full-train", type=int, default=2000)
    parser.add_argument("--val", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--random-weights", metavar="DIR", help="the model folder whose shape to train, random weights")
    parser.set_defaults(epochs=1, cpu_allocator=None, lr_scheduler=None)  # bench.finetune's set-ups read these
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("bench.gpu measures a CUDA GPU and none is visible here")
    with tempfile.TemporaryDirectory() as tmp:
        source = (randomly_initialised(args.random_weights, f"{tmp}/model") if args.random_weights
                  else modeling.resolve_model("default"))
        tokenizer = modeling.load_tokenizer(source)
        peak = bf16_peak()
        result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "bf16_peak_tflops": peak,
                  "batch_size": args.batch_size, "random_weights": bool(args.random_weights), "shapes": {}}
        for shape in SHAPES:
            runs = {}
            for method in ("naive", "pipeline"):
                model = None  # the last run's model leaves the GPU before this one's peak memory counts
                run, model = trained(method, shape, source, tokenizer, args)
                runs[method] = with_mfu(run, peak * 1e3)  # the peak in TFLOP/s, the run's rate in GFLOP/s
            result["shapes"][shape] = {"train_rows": getattr(args, f"{shape}_train"), "max_length": SHAPES[shape],
                                       "runs": runs, "speedup_vs_naive": ratio(runs["pipeline"]["samples_per_second"],
                                                                               runs["naive"]["samples_per_second"])}
        result["inference_ms"] = {f"{precision}_b{size}_128": forward_ms(model, tokenizer, size, precision)
                                  for precision in ("fp32", "bf16") for size in (1, 32)}
    write_json(ROOT / "bench/results/gpu.json", result, exact=True)
    (ROOT / "bench/gpu.md").write_text(markdown(result))
    print((ROOT / "bench/gpu.md").read_text())


def markdown(r):
    lines = [f"`python -m bench.gpu` on {r['gpu']}, torch {r['torch']}; batch {r['batch_size']}, one epoch; bf16 GEMM "
             f"peak measured in the same run: {r['bf16_peak_tflops']} TFLOP/s"
             + ("; random weights of the model's shape (speed only)" if r["random_weights"] else "") + ".", "",
             "| shape | set-up | seconds | samples/s | text tokens/s | MFU (bf16 peak) | peak GPU memory MB |",
             "|---|---|---|---|---|---|---|"]
    for shape, s in r["shapes"].items():
        for method, run in s["runs"].items():
            lines.append(f"| {shape} ({s['train_rows']} rows, {s['max_length']} tokens) | {method} | "
                         f"{run['seconds']} | {run['samples_per_second']} | {run['tokens_per_second']} | "
                         f"{run['mfu']:.1%} | {run['peak_gpu_memory_mb']} |")
    lines += [""] + [f"{shape}: pipeline {s['speedup_vs_naive']}× the naive loop." for shape, s in r["shapes"].items()]
    lines += ["", "Inference, the classifier's forward at 128 tokens, median ms: "
              + ", ".join(f"{key} {value}" for key, value in r["inference_ms"].items()) + ".", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
