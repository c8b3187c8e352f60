"""Fine-tune throughput side by side, in one run: the pipeline's training against two set-ups users start from.

    python -m bench.finetune                          # both shapes, one seed, ~13 min on 2 AVX2 cores
    python -m bench.finetune --short-train 1000 --full-train 500 --seeds 42,43,44   # bench/finetune_avx2.md's, 39 min
    python -m bench.finetune --shapes full --full-train 1000 --seeds 42,43,44 --name finetune_full1000   # 63 steps

- naive: a plain PyTorch loop as the seeds wrote it: every text padded to a fixed length and tokenized inside the
  Dataset's __getitem__, AdamW, fp32.
- trainer: a run_glue.py-style HF Trainer: the split tokenized up front with datasets.map, padded to the fixed
  length, head truncation, run_glue's defaults (no warm-up, no weight decay, linear decay).
- pipeline: transfer.training.classifier.train_classifier exactly as the finetune stage calls it (params.yaml's train
  section: dynamic padding, length-grouped batches, head+tail truncation, checkpoints, train.evals_per_epoch
  evaluations per epoch, the best one's weights kept).

Same encoder (the bundled MiniLM, not the pretrained one, so no stage needs to have run), the same prepared train,
validation and test rows (data/prepared: `dvc repro prepare`), epochs, batch size, learning rate and seed. Two shapes:
`short` cuts each review to its first two sentences (like the seeds' e-commerce reviews, 128 tokens), `full`
keeps whole reviews at 256 tokens. Seconds run from raw texts to a trained model and include each set-up's
evaluation of the validation rows; "in steps" are the seconds inside its training steps alone (bench.throughput's
StepClock: forward, backward, the update), and "MFU in steps" their rate, apart from the data loading, evaluation,
checkpoints and start that the whole run's MFU also pays for. After the timed part each model predicts the test rows
(untimed): the pipeline picks its best evaluation by the validation rows, so only the test rows compare the set-ups'
F1 on rows none chose anything by. Each run is a process of its own. With several --seeds (the head's weights, the
batch order and dropout change; the rows do not) each set-up runs once per seed: seconds are the median run's,
macro-F1 the mean, so one seed's luck does not decide which set-up learns better. Writes bench/results/finetune.json
and bench/finetune.md (--name NAME: NAME.json and NAME.md), with _avx2 or _avx512 before the suffix on a CPU without
AVX-512 VNNI.
"""
import argparse
import json
import re
import tempfile
import time

import torch

from bench.inference import cpu, on_this_cpu
from bench.throughput import (ROOT, FlopCounter, StepClock, best_peak, matmul_peak, peak_rss_mb, ratio, run_apart,
                              with_mfu)
from transfer import modeling
from transfer.config import LR_SCHEDULERS, load_params
from transfer.data import dataset
from transfer.outputs import write_json
from transfer.tasks.classification import trainer_metrics

SHAPES = {"short": 128, "full": 256}
METHODS = ("naive", "trainer", "pipeline")


def first_sentences(text, count=2):
    return " ".join(re.split(r"(?<=[.!?])\s+", text.strip())[:count])


def rows(shape, train, val, test):
    parts, names = dataset.load_prepared(ROOT / "data/prepared")
    chosen = {"train": parts["train"].head(train).copy(), "validation": parts["validation"].head(val).copy(),
              "test": parts["test"].head(test).copy()}
    if shape == "short":
        for frame in chosen.values():
            frame["text"] = frame["text"].map(first_sentences)
    return chosen, names


def macro_f1(logits, labels):
    from transformers import EvalPrediction

    return trainer_metrics(EvalPrediction(predictions=logits, label_ids=labels))["macro_f1"]


def run_naive(model, tokenizer, parts, length, args):
    """The seeds' loop, on the device the model is on (bench.gpu moves it to the GPU)."""
    class Tokenizing(torch.utils.data.Dataset):
        def __init__(self, frame):
            self.texts, self.labels = frame["text"].tolist(), frame["label"].tolist()

        def __len__(self):
            return len(self.texts)

        def __getitem__(self, i):
            encoded = tokenizer(self.texts[i], padding="max_length", truncation=True, max_length=length,
                                return_tensors="pt")
            return {**{key: value[0] for key, value in encoded.items()}, "labels": torch.tensor(self.labels[i])}

    loader = torch.utils.data.DataLoader(Tokenizing(parts["train"]), batch_size=args.batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(args.seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate)
    model.train()
    for _ in range(args.epochs):
        for batch in loader:
            model(**{key: value.to(model.device) for key, value in batch.items()}).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.eval()
    logits = []
    with torch.no_grad():
        for batch in torch.utils.data.DataLoader(Tokenizing(parts["validation"]), batch_size=64):
            batch.pop("labels")
            logits.append(model(**{key: value.to(model.device) for key, value in batch.items()}).logits.cpu())
    return macro_f1(torch.cat(logits).numpy(), parts["validation"]["label"].to_numpy())


def run_trainer(model, tokenizer, parts, length, args):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments, default_data_collator

    def tokenized(frame):
        dataset = Dataset.from_dict({"text": frame["text"].tolist(), "label": frame["label"].tolist()})
        return dataset.map(lambda batch: tokenizer(batch["text"], padding="max_length", max_length=length,
                                                   truncation=True), batched=True, remove_columns=["text"])

    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(model=model, args=TrainingArguments(
            output_dir=out, per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=64,
            learning_rate=args.learning_rate, num_train_epochs=args.epochs, seed=args.seed, save_strategy="no",
            report_to=[], disable_tqdm=True, use_cpu=True), train_dataset=tokenized(parts["train"]),
            eval_dataset=tokenized(parts["validation"]), data_collator=default_data_collator,
            compute_metrics=trainer_metrics)
        trainer.train()
        return trainer.evaluate()["eval_macro_f1"]


def test_macro_f1(model, tokenizer, frame, length, truncation):
    """Macro-F1 on test rows no set-up chose anything by, truncated as the set-up trained (untimed)."""
    probabilities = modeling.predict(model, tokenizer, frame["text"].tolist(), length, truncation=truncation)
    return macro_f1(probabilities, frame["label"].to_numpy())


def run_pipeline(model, tokenizer, parts, length, args):
    from transfer.training.classifier import train_classifier

    params = load_params(ROOT / "params.yaml")
    params["train"] = {**params["train"], "max_length": length, "batch_size": args.batch_size}
    params["seed"] = args.seed
    if args.cpu_allocator:  # bench.cpu_allocator runs this set-up with each setting
        params["compute"]["cpu_allocator"] = args.cpu_allocator
    if args.lr_scheduler:
        params["train"]["lr_scheduler"] = args.lr_scheduler
    with tempfile.TemporaryDirectory() as out:
        results, _ = train_classifier(model, tokenizer, parts, params, args.epochs, args.learning_rate, out)
    return results["val_macro_f1"]


def one(args):
    """One set-up on one shape, in this process: prints its figures as JSON."""
    torch.manual_seed(args.seed)
    parts, names = rows(args.shape, args.train, args.val, args.test)
    source = modeling.resolve_model("default")
    tokenizer = modeling.load_tokenizer(source)
    # the pipeline trains with its params' train.attention_dropout and truncation; the naive loop and the Trainer with
    # the model's dropout and head truncation
    pipeline, train_cfg = args.method == "pipeline", load_params(ROOT / "params.yaml")["train"]
    dropout = train_cfg["attention_dropout"] if pipeline else None
    model = modeling.load_classifier(source, names, attention_dropout=dropout)
    counter, clock = FlopCounter(model), StepClock(model)
    started = time.perf_counter()
    f1 = globals()[f"run_{args.method}"](model, tokenizer, parts, SHAPES[args.shape], args)
    seconds = time.perf_counter() - started
    samples = args.train * args.epochs
    report = {"seconds": round(seconds, 1), "samples_per_second": round(samples / seconds, 2),
              **counter.report(seconds), **clock.report(counter, seconds), "peak_rss_mb": peak_rss_mb(),
              "val_macro_f1": round(f1, 4)}
    if pipeline:
        report["lr_scheduler"] = args.lr_scheduler or train_cfg["lr_scheduler"]
        if report["lr_scheduler"] == "warmup_stable_decay":
            report["decay_ratio"] = train_cfg["decay_ratio"]
    if args.test:  # bench.cpu_allocator times these runs alone: --test 0
        truncation = train_cfg["truncation"] if pipeline else "head"
        test_f1 = test_macro_f1(model, tokenizer, parts["test"], SHAPES[args.shape], truncation)
        report["test_macro_f1"] = round(test_f1, 4)
    print(json.dumps(report))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default="short,full")
    parser.add_argument("--short-train", type=int, default=1000, help="train rows of the short shape")
    parser.add_argument("--full-train", type=int, default=500, help="train rows of the full shape")
    parser.add_argument("--train", type=int, help=argparse.SUPPRESS)  # one run's rows
    parser.add_argument("--val", type=int, default=200, help="validation rows: evaluated inside the timed runs")
    parser.add_argument("--test", type=int, default=1000, help="test rows: macro-F1 after each run, untimed")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--seeds", default="42", help="comma-separated: each set-up runs once per seed")
    parser.add_argument("--seed", type=int, default=42, help=argparse.SUPPRESS)  # one run's seed
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--shape", choices=SHAPES, help=argparse.SUPPRESS)
    parser.add_argument("--cpu-allocator", choices=("auto", "keep", "native"), help=argparse.SUPPRESS)
    parser.add_argument("--name", default="finetune", help="writes bench/results/NAME.json and bench/NAME.md (with "
                        "_avx2 or _avx512 before the suffix on a CPU without AVX-512 VNNI)")
    parser.add_argument("--lr-scheduler", choices=LR_SCHEDULERS,
                        help="the pipeline's train.lr_scheduler (default: params.yaml's)")
    args = parser.parse_args()
    if args.one:
        return one(args)
    if args.test < 1:
        parser.error("--test must be at least 1: the set-ups' macro-F1 is compared on the test rows")
    seeds = [int(seed) for seed in args.seeds.split(",")]
    before = matmul_peak()
    result = {"cpu": cpu(), "torch": torch.__version__, "epochs": args.epochs,
              "batch_size": args.batch_size, "learning_rate": args.learning_rate, "seeds": seeds, "shapes": {},
              "command": "python -m bench.finetune"
                         + (f" --shapes {args.shapes}" if args.shapes != "short,full" else "")
                         + "".join(f" --{shape}-train {getattr(args, f'{shape}_train')}"
                                   for shape in args.shapes.split(","))
                         + (f" --seeds {args.seeds}" if len(seeds) > 1 else "")
                         + (f" --lr-scheduler {args.lr_scheduler}" if args.lr_scheduler else "")
                         + (f" --name {args.name}" if args.name != "finetune" else "")}
    chosen = {"lr_scheduler": args.lr_scheduler} if args.lr_scheduler else {}  # the pipeline's; the others ignore it
    for shape in args.shapes.split(","):
        train = getattr(args, f"{shape}_train")
        runs = {method: over_seeds([run_apart("bench.finetune", method=method, shape=shape, train=train, val=args.val,
                                              test=args.test,
                                              epochs=args.epochs, batch_size=args.batch_size,
                                              learning_rate=args.learning_rate, seed=seed, **chosen) for seed in seeds])
                for method in METHODS}
        speed = {m: runs[m]["samples_per_second"] for m in METHODS}
        result["shapes"][shape] = {
            "max_length": SHAPES[shape], "train_rows": train, "val_rows": args.val, "test_rows": args.test,
            "mean_tokens": round(runs["pipeline"]["tokens"] / (train * args.epochs), 1), "runs": runs,
            "speedup_vs_naive": ratio(speed["pipeline"], speed["naive"]),
            "speedup_vs_trainer": ratio(speed["pipeline"], speed["trainer"]),
            **f1_against_others(runs, "val_macro_f1", ""), **f1_against_others(runs, "test_macro_f1", "test_")}
    result["matmul_peak"] = peak = best_peak(before, matmul_peak())
    for s in result["shapes"].values():
        s["runs"] = {method: with_mfu(run, peak["gflops"]) for method, run in s["runs"].items()}
        s["mfu"], s["mfu_in_steps"] = s["runs"]["pipeline"]["mfu"], s["runs"]["pipeline"]["mfu_in_steps"]
    results, table = on_this_cpu(ROOT / f"bench/results/{args.name}.json"), on_this_cpu(ROOT / f"bench/{args.name}.md")
    write_json(results, summarised(result), exact=True)
    table.write_text(markdown(result))
    print(table.read_text())


def over_seeds(runs):
    """One set-up's runs, one per seed, as one: the figures of the median run by seconds, macro-F1 the mean of all
    (each seed's kept beside it)."""
    merged = {**sorted(runs, key=lambda run: run["seconds"])[len(runs) // 2],
              "seconds_by_seed": [run["seconds"] for run in runs]}
    for key in ("val_macro_f1", "test_macro_f1"):
        f1 = [run[key] for run in runs]
        merged.update({key: round(sum(f1) / len(f1), 4), f"{key}_by_seed": f1})
    return merged


def f1_against_others(runs, key, prefix):
    """The pipeline's mean macro-F1 (`key`) less the naive loop's and the Trainer's, and with how many seeds it was at
    least the naive loop's."""
    pipeline = runs["pipeline"]
    return {f"{prefix}f1_vs_naive": round(pipeline[key] - runs["naive"][key], 4),
            f"{prefix}f1_vs_trainer": round(pipeline[key] - runs["trainer"][key], 4),
            f"pipeline_{prefix}f1_at_least_naive_seeds": sum(
                ours >= naive for ours, naive in zip(pipeline[f"{key}_by_seed"], runs["naive"][f"{key}_by_seed"]))}


def summarised(result):
    """The plain keys: each the worst shape's (per shape under `shapes`)."""
    shapes = result["shapes"].values()
    return {**result, "speedup_vs_naive": min(s["speedup_vs_naive"] for s in shapes),
            "speedup_vs_trainer": min(s["speedup_vs_trainer"] for s in shapes),
            "mfu": min(s["mfu"] for s in shapes)}


def schedule(shape):
    """' (lr_scheduler: ...)': the pipeline's learning-rate schedule, where the run recorded it."""
    chosen = shape["runs"]["pipeline"].get("lr_scheduler")
    return f" (lr_scheduler: {chosen})" if chosen else ""


def markdown(r):
    c, p = r["cpu"], r["matmul_peak"]

    def by_seed(run, key):
        return f"{run[key]}; {' / '.join(map(str, run[f'{key}_by_seed']))}"

    generation = f"{c['generation']}, " if c.get("generation") else ""  # as bench.inference prints it
    lines = [f"`{r['command']}` on {c['name']} ({generation}{c['machine']}, {c['threads']} threads, AVX-512 VNNI: "
             f"{'yes' if c['avx512_vnni'] else 'no'}), torch {r['torch']}; {r['epochs']} epoch(s), batch "
             f"{r['batch_size']}, lr {r['learning_rate']}, seeds {', '.join(map(str, r['seeds']))}. fp32 GEMM peak, "
             f"the best measured before and after the runs ({' and '.join(map(str, p['measured']))}): "
             f"{p['gflops']} GFLOP/s ({', '.join(f'{k}: {v}' for k, v in p['by_shape'].items())}). Validation "
             "rows are evaluated inside the timed runs, and the pipeline keeps its best evaluation by them; test rows, "
             "after each run, untimed, are rows no set-up chose anything by.", "",
             "| shape | set-up | seconds | in steps | samples/s | text tokens/s | text tokens / computed | MFU | "
             "MFU in steps | peak RSS MB | val macro-F1 (mean; by seed) | test macro-F1 (mean; by seed) |",
             "|---" * 12 + "|"]
    for shape, s in r["shapes"].items():
        for method, run in s["runs"].items():
            lines.append(f"| {shape} ({s['train_rows']} rows, {s['max_length']} tokens, {s['mean_tokens']} per text; "
                         f"{s['val_rows']} val, {s['test_rows']} test) | {method} | {run['seconds']} | "
                         f"{run['step_seconds']} ({run['step_share']:.0%}) | {run['samples_per_second']} | "
                         f"{run['tokens_per_second']} | {run['tokens'] / run['padded_tokens']:.0%} | "
                         f"{run['mfu']:.0%} | {run['mfu_in_steps']:.0%} | {run['peak_rss_mb']} | "
                         f"{by_seed(run, 'val_macro_f1')} | {by_seed(run, 'test_macro_f1')} |")
    seeds = len(r["seeds"])
    lines += [""] + [f"{shape}: pipeline{schedule(s)} {s['speedup_vs_naive']}× the naive loop, "
                     f"{s['speedup_vs_trainer']}× the run_glue-style Trainer; MFU {s['mfu']:.0%} of the measured "
                     f"peak over the whole run, "
                     f"{s['mfu_in_steps']:.0%} within its training steps. Mean macro-F1 against the "
                     f"naive loop's: test {s['test_f1_vs_naive']:+} (at least its F1 with "
                     f"{s['pipeline_test_f1_at_least_naive_seeds']} of {seeds} seeds), val {s['f1_vs_naive']:+} "
                     f"({s['pipeline_f1_at_least_naive_seeds']} of {seeds}); against the Trainer's: test "
                     f"{s['test_f1_vs_trainer']:+}, val {s['f1_vs_trainer']:+}."
                     for shape, s in r["shapes"].items()] + [""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
