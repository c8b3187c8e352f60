"""The memory each strategy needs to train a base-size and a large-size encoder, with and without gradient
checkpointing, in one run.

    python -m bench.memory                                   # BERT-base and BERT-large shapes, batch 8 x 128 tokens
    python -m bench.memory --sizes base --batch 16 --length 256

Each point is one epoch of one optimizer step through train_classifier, as the finetune ("full") and peft stages run
it (the Trainer, AdamW, an evaluation, the epoch's checkpoint, the best epoch reloaded), in a process of its own, on
a random-weight BERT of that shape (the memory of pretrained weights is the same) with the bundled tokenizer.
`peak_rss_mb` is the process's peak resident memory: the weights, gradients, AdamW's two moments for what trains,
the activations, the epoch's checkpoint and the best epoch reloaded, and Python's and the libraries' own share.
(`model_rss_mb`, resident memory once the model is loaded, is no measure of the weights: safetensors maps them
lazily, so it reads the same for both sizes.) On a GPU the weights, gradients, optimizer state and activations
are the same bytes, without the Python and library share. Writes bench/results/memory.json and bench/memory.md.
"""
import argparse
import json
import resource
import tempfile
from pathlib import Path

from bench.inference import cpu
from bench.throughput import ROOT, run_apart
from transfer import strategies
from transfer.outputs import write_json

RESULTS, TABLE = ROOT / "bench/results/memory.json", ROOT / "bench/memory.md"
SIZES = {  # BERT-base and BERT-large (110M and 335M parameters), the shapes most encoders come in
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}
FULL = "full"  # the finetune stage: every weight trains
CHECKPOINTED = (FULL, "lora")  # the two also measured with compute.gradient_checkpointing: true


def resident_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def one(args):
    import pandas as pd
    import torch

    from transfer import modeling
    from transfer.config import load_params
    from transfer.training.classifier import train_classifier

    params = load_params(ROOT / "params.yaml")
    params["train"].update(max_length=args.length, batch_size=args.batch, eval_batch_size=args.batch,
                           group_by_length=False, logging_steps=1)
    params["compute"]["gradient_checkpointing"] = bool(args.checkpointing)
    params["pretrain"].update(batch_size=args.batch, max_length=args.length)
    params["adapter_stack"]["domain_steps"] = 1
    tokenizer = modeling.load_tokenizer(args.model)
    torch.manual_seed(0)
    model = modeling.load_classifier(args.model, ["negative", "positive"])
    model_mb = resident_mb()
    text = " ".join(["the film was long and the story was good but the acting was not"] * 20)  # > 256 tokens
    rows = pd.DataFrame({"text": [text] * args.batch, "label": [0, 1] * (args.batch // 2)})
    with tempfile.TemporaryDirectory() as work:
        if args.strategy == FULL:
            plan = strategies.Plan(model)
        else:
            plan = strategies.prepare(args.strategy, model, params, work_dir=Path(work) / "domain",
                                      tokenizer=tokenizer, domain_texts=[text] * args.batch)
        results, _ = train_classifier(plan.model, tokenizer, {"train": rows, "validation": rows}, params, 1, 1e-4,
                                      Path(work) / "checkpoints", plan.param_groups, plan.callbacks)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"size": args.size, "strategy": args.strategy, "gradient_checkpointing": bool(args.checkpointing),
                      "trainable_params": results["trainable_params"], "total_params": results["total_params"],
                      "model_rss_mb": round(model_mb), "peak_rss_mb": round(peak_mb),
                      "training_mb": round(peak_mb - model_mb)}))


def save_random_model(size, folder):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from transfer import modeling

    source = modeling.resolve_model("default")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=modeling.load_tokenizer(source).vocab_size, num_labels=2, **SIZES[size])
    BertForSequenceClassification(config).save_pretrained(folder)
    modeling.load_tokenizer(source).save_pretrained(folder)
    return folder


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="base,large")
    parser.add_argument("--strategies", default=",".join([FULL, *strategies.NAMES]))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--one", action="store_true", help="one point, in this process")
    parser.add_argument("--size")
    parser.add_argument("--strategy")
    parser.add_argument("--model")
    parser.add_argument("--checkpointing", type=int, default=0)
    args = parser.parse_args()
    if args.one:
        return one(args)
    points = []
    for size in args.sizes.split(","):
        with tempfile.TemporaryDirectory() as folder:
            save_random_model(size, folder)
            for strategy in args.strategies.split(","):
                for checkpointing in (0, 1) if strategy in CHECKPOINTED else (0,):
                    points.append(run_apart("bench.memory", size=size, strategy=strategy, model=folder,
                                            checkpointing=checkpointing, batch=args.batch, length=args.length))
                    print(json.dumps(points[-1]), flush=True)
    result = {"cpu": cpu(), "batch": args.batch, "max_length": args.length, "points": points,
              "command": "python -m bench.memory"}
    write_json(RESULTS, result, exact=True)
    TABLE.write_text(markdown(result))
    print(TABLE.read_text())


def markdown(r):
    lines = [f"`{r['command']}` on {r['cpu']['name']} ({r['cpu']['threads']} threads): one optimizer step of "
             f"train_classifier at batch {r['batch']} x {r['max_length']} tokens, each point in its own process; "
             "MB of resident memory.", "",
             "| size | strategy | gradient checkpointing | trainable | peak MB |", "|---|---|---|---|---|"]
    for p in r["points"]:
        share = p["trainable_params"] / p["total_params"]
        lines.append(f"| {p['size']} ({p['total_params'] / 1e6:.0f}M) | {p['strategy']} | "
                     f"{'yes' if p['gradient_checkpointing'] else 'no'} | {share:.2%} | {p['peak_rss_mb']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
