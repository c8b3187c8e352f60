"""Stage 2: domain-adaptive masked-LM pretraining (DAPT, optionally TAPT) of the encoder, after adding the
characters its tokenizer lacks to the vocabulary where pretrain.extend_vocab asks for it."""
import math
from pathlib import Path

import torch

from transfer import machine, modeling, pooling, strategies
from transfer.data import dataset, vocabulary
from transfer.outputs import replaced_together, write_json
from transfer.training import checkpointing, launcher
from transfer.training.masked_lm import fixed_masked_batches, masked_lm_loss, train_masked_lm
from transfer.training.tracking import live_files

PREPARED = Path("data/prepared")
OUT_DIR = Path("models/pretrained")
METRICS = Path("metrics/pretrain.json")
TIMING = Path("metrics/timing/pretrain.json")
CURVES = Path("metrics/curves/pretrain")
CHECKPOINTS = Path("checkpoints/pretrain")


def main(params):
    strategies.preflight(params)  # model.name is not a dep of prepare: a changed one is first read here
    cfg, seed = params["pretrain"], params["seed"]
    source = modeling.resolve_model(params["model"]["name"])
    trust = params["model"]["trust_remote_code"]
    tokenizer = modeling.load_tokenizer(source, trust)
    parts, _ = dataset.load_prepared(PREPARED)
    domain_texts = parts[dataset.POOL]["text"].tolist() + parts["train"]["text"].tolist()  # no val or test text
    max_unknown_rate = params["data"]["max_unknown_rate"]
    if not cfg["enabled"]:
        torch.manual_seed(seed)  # the added tokens' rows are drawn
        encoder = modeling.load_encoder(source, trust)
        added = vocabulary.extend(tokenizer, encoder, domain_texts, cfg, max_unknown_rate)
        encoder.config.update({pooling.SOURCE_KEY: pooling.source_pooling(source)})  # for train.pooling: auto
        if launcher.is_main():
            with replaced_together(OUT_DIR, METRICS, TIMING, CURVES) as (out, metrics_file, timing_file, curves):
                modeling.save(encoder, tokenizer, out)
                write_json(metrics_file, {"enabled": False, "vocabulary": added})
                write_json(timing_file, {"train_seconds": 0.0})
                live_files(curves).end()  # no curve, but the declared folder exists
        checkpointing.finish(CHECKPOINTS)
        return
    texts = parts[dataset.POOL]["text"].tolist()
    held_out, texts = texts[:cfg["eval_texts"]], texts[cfg["eval_texts"]:]
    if cfg["include_task_texts"]:
        texts += parts["train"]["text"].tolist()
    dataset.check_pretrain_pool(parts, cfg)  # prepare checked it already; data/prepared may come from elsewhere
    checkpointing.claim(CHECKPOINTS, checkpointing.run_identity(params, [PREPARED, source]),
                        params["checkpoints"]["resume"])
    torch.manual_seed(seed)
    model = modeling.load_encoder(source, trust, masked_lm=True)
    added = vocabulary.extend(tokenizer, model, domain_texts, cfg, max_unknown_rate)
    eval_batches = fixed_masked_batches(held_out, tokenizer, cfg, seed)
    loss_before = masked_lm_loss(model, eval_batches)
    train_seconds = train_masked_lm(model, tokenizer, texts, cfg, params["compute"], seed, CHECKPOINTS,
                                    cfg["max_steps"], cfg["learning_rate"], params["checkpoints"]["every_steps"],
                                    curves_dir=CHECKPOINTS / "curves")
    model.to("cpu")
    loss_after = masked_lm_loss(model, eval_batches)
    # Keep the encoder with its pooler: the masked-LM model has none, the classifier wants the pretrained one.
    encoder = modeling.load_encoder(source, trust)
    encoder.resize_token_embeddings(model.get_input_embeddings().num_embeddings)  # rows for the added tokens
    missing, unexpected = encoder.load_state_dict(model.base_model.state_dict(), strict=False)
    if unexpected or any("pooler" not in key for key in missing):
        raise RuntimeError(f"encoder weights did not line up: missing {missing}, unexpected {unexpected}")
    encoder.config.update({pooling.SOURCE_KEY: pooling.source_pooling(source)})  # for train.pooling: auto
    if launcher.is_main():  # one process writes, however many trained
        with replaced_together(OUT_DIR, METRICS, TIMING, CURVES) as (out, metrics_file, timing_file, curves):
            modeling.save(encoder, tokenizer, out)
            write_json(metrics_file, {
                "enabled": True, "train_texts": len(texts), "eval_texts": len(held_out), "steps": cfg["max_steps"],
                "mlm_loss_before": loss_before, "mlm_loss_after": loss_after,
                "perplexity_before": math.exp(loss_before), "perplexity_after": math.exp(loss_after),
                "vocabulary": added})
            write_json(timing_file, {"train_seconds": round(train_seconds, 1), "machine": machine.describe()})
            (CHECKPOINTS / "curves").rename(curves)
    checkpointing.finish(CHECKPOINTS)
    if added["added_tokens"]:
        print(f"pretrain: added {added['added_tokens']} tokens to the vocabulary: unknown tokens "
              f"{added['unknown_token_rate_before']:.1%} -> {added['unknown_token_rate_after']:.1%}")
    print(f"pretrain: held-out MLM loss {loss_before:.3f} -> {loss_after:.3f}")


if __name__ == "__main__":
    launcher.run_stage(main)
