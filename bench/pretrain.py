"""Masked-LM pretraining throughput side by side, in one run: the pipeline's pretrain against a stock HF Trainer.

    python -m bench.pretrain                  # params.yaml's pretrain section (40 steps), ~3 min on 2 CPU cores
    python -m bench.pretrain --steps 20

- trainer: run_mlm.py's way: AutoModelForMaskedLM through a stock Trainer, whose loss runs the vocabulary head
  (hidden x 30,522 for MiniLM) on every position.
- pipeline: transfer.training.masked_lm.train_masked_lm as the pretrain stage calls it: the head on the masked positions only
  (about 15%), batch-seeded masks, checkpoints.

Same encoder (the bundled MiniLM), the same texts (the prepared unlabeled pool: `dvc repro prepare`), masking,
steps, batch, length, learning rate and seed; each run in a process of its own. Useful FLOPs count the encoder on
every text token and the head on the masked ones (what the loss needs). Writes bench/results/pretrain.json and
bench/pretrain.md.
"""
import argparse
import json
import tempfile
import time

import torch

from bench.inference import cpu, on_this_cpu
from bench.throughput import ROOT, FlopCounter, best_peak, matmul_peak, peak_rss_mb, ratio, run_apart, with_mfu
from transfer import modeling
from transfer.config import load_params
from transfer.data import dataset
from transfer.outputs import write_json

RESULTS, TABLE = on_this_cpu(ROOT / "bench/results/pretrain.json"), on_this_cpu(ROOT / "bench/pretrain.md")
METHODS = ("trainer", "pipeline")


def one(args):
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from transfer.training.masked_lm import train_masked_lm

    params = load_params(ROOT / "params.yaml")
    cfg = params["pretrain"]
    texts = dataset.load_prepared(ROOT / "data/prepared")[0][dataset.POOL]["text"].tolist()
    torch.manual_seed(args.seed)
    source = modeling.resolve_model("default")
    tokenizer = modeling.load_tokenizer(source)
    model = modeling.load_encoder(source, masked_lm=True)
    head = 6 * model.config.hidden_size * model.config.vocab_size * cfg["mlm_probability"]
    counter = FlopCounter(model, extra_per_token=head)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        if args.method == "pipeline":
            train_masked_lm(model, tokenizer, texts, cfg, params["compute"], args.seed, out, args.steps, cfg["learning_rate"],
                            save_every=params["checkpoints"]["every_steps"])
        else:
            encoded = tokenizer(texts, truncation=True, max_length=cfg["max_length"])
            Trainer(model=model, args=TrainingArguments(
                output_dir=out, max_steps=args.steps, learning_rate=cfg["learning_rate"],
                per_device_train_batch_size=cfg["batch_size"], warmup_ratio=cfg["warmup_ratio"], seed=args.seed,
                save_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True),
                train_dataset=Dataset.from_dict(dict(encoded)),
                data_collator=DataCollatorForLanguageModeling(tokenizer, mlm_probability=cfg["mlm_probability"]),
            ).train()
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": round(seconds, 1), "steps_per_second": round(args.steps / seconds, 3),
                      **counter.report(seconds), "peak_rss_mb": peak_rss_mb()}))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=load_params(ROOT / "params.yaml")["pretrain"]["max_steps"])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return one(args)
    before = matmul_peak()
    runs = {method: run_apart("bench.pretrain", method=method, steps=args.steps, seed=args.seed) for method in METHODS}
    peak = best_peak(before, matmul_peak())
    runs = {method: with_mfu(run, peak["gflops"]) for method, run in runs.items()}
    result = {"cpu": cpu(), "torch": torch.__version__, "matmul_peak": peak, "steps": args.steps, "runs": runs,
              "speedup_vs_trainer": ratio(runs["pipeline"]["tokens_per_second"], runs["trainer"]["tokens_per_second"]),
              "mfu": runs["pipeline"]["mfu"], "command": f"python -m bench.pretrain --steps {args.steps}"}
    write_json(RESULTS, result, exact=True)
    TABLE.write_text(markdown(result))
    print(TABLE.read_text())


def markdown(r):
    c, p = r["cpu"], r["matmul_peak"]
    lines = [f"`{r['command']}` on {c['name']} ({c['machine']}, {c['threads']} threads, AVX-512 VNNI: "
             f"{'yes' if c['avx512_vnni'] else 'no'}), torch {r['torch']}; {r['steps']} masked-LM steps. fp32 GEMM "
             f"peak, the best measured before and after the runs ({' and '.join(map(str, p['measured']))}): "
             f"{p['gflops']} GFLOP/s.", "",
             "| set-up | seconds | steps/s | text tokens/s | useful GFLOP/s | MFU | peak RSS MB |",
             "|---|---|---|---|---|---|---|"]
    for method, run in r["runs"].items():
        lines.append(f"| {method} | {run['seconds']} | {run['steps_per_second']} | {run['tokens_per_second']} | "
                     f"{run['useful_gflops']} | {run['mfu']:.0%} | {run['peak_rss_mb']} |")
    lines += ["", f"Pipeline {r['speedup_vs_trainer']}× the stock Trainer's tokens/s; MFU {r['mfu']:.0%} of the "
              "measured peak.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
