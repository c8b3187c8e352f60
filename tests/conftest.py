"""Tiny random-config models and toy data, built inside the tests: no hub, no download."""
import json
import os
import random
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
POSITIVE = "good great fine lovely superb wonderful brilliant enjoyable fun moving".split()
NEGATIVE = "bad awful poor boring dull terrible weak annoying ugly tedious".split()
NEUTRAL = "the movie film plot actor story scene was and it a this".split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def toy_texts(count, seed=0, positive=POSITIVE, negative=NEGATIVE, neutral=NEUTRAL, separator=" ", numbered=True):
    """Short 'reviews' whose label follows the sentiment words they contain: easy to learn. `numbered` ends each
    with its row number (every row unique; the number's parity is the label, so a model may read it too)."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        label = "positive" if i % 2 == 0 else "negative"
        words = rng.sample(neutral, 5) + rng.sample(positive if label == "positive" else negative, 3)
        rng.shuffle(words)
        text = separator.join(words)
        rows.append({"review": f"{text} {i}" if numbered else text, "sentiment": label})
    return pd.DataFrame(rows)


def build_tiny_bert(folder, layers=4):
    """A random 4-layer BERT with hidden size 32 and a word-level vocabulary, saved like a hub model."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = SPECIAL + POSITIVE + NEGATIVE + NEUTRAL + [str(d) for d in range(10)] + [f"##{d}" for d in range(10)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), model_max_length=128)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128,
                        initializer_range=0.1)  # wider than BERT's 0.02 so random features differ by input;
    # 0.2 made a few seeds' fine-tunes collapse to one class, so CI failed on some machines and not others
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the same weights whichever test builds it first
        BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_llama(folder):
    """A random 2-layer Llama (hidden size 32) with a word-level tokenizer over the toy words, saved like a hub
    model: the decoder-only model of the causal-LM tests."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    words = ["<unk>", "<s>", "</s>"] + POSITIVE + NEGATIVE + NEUTRAL + [str(d) for d in range(10)]
    word_level = Tokenizer(models.WordLevel({word: i for i, word in enumerate(words)}, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="<unk>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(folder)
    config = LlamaConfig(vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1,
                         eos_token_id=2, tie_word_embeddings=True)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def default_params():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def tiny_params(model_dir, data_file):
    """The default params pointed at a tiny model and toy CSV, with steps cut so a stage takes seconds."""
    params = default_params()
    params["model"]["name"] = str(model_dir)
    params["data"].update(source=str(data_file), text_column="review", label_column="sentiment",
                          max_train=None, max_val=None, max_test=None, max_pool=None, min_chars=3,
                          min_train_per_class=5)  # a 60-row toy set keeps a pool for pretraining
    params["pretrain"].update(max_steps=30, eval_texts=16, learning_rate=1e-3, batch_size=8, max_length=32)
    params["train"].update(max_length=32, batch_size=8, logging_steps=5, early_stopping_patience=3)
    params["finetune"].update(epochs=6, learning_rate=2e-3)
    params["peft"]["epochs"] = 6  # at 3 the toy LoRA model sits near 0.6-0.7 accuracy, close to its decision boundary
    params["export"].update(source="peft", latency_runs=2, latency_warmup=1, latency_max_length=32)  # tests of "best": test_quality.py
    return params


@pytest.fixture(scope="session")
def workdir(tiny_bert, tmp_path_factory):
    """Every stage's main() run once, in pipeline order, on the tiny BERT and 400 toy texts."""
    from transfer.config import validate

    folder = tmp_path_factory.mktemp("pipeline")
    toy_texts(400).to_csv(folder / "reviews.csv", index=False)
    params = validate(tiny_params(tiny_bert, folder / "reviews.csv"))
    run_pipeline(folder, params)
    return folder, params


def run_pipeline(folder, params):
    """Every stage's main() in pipeline order, in `folder`."""
    from stages import baseline, evaluate, export, finetune, peft, prepare, pretrain

    previous = os.getcwd()
    os.chdir(folder)
    try:
        for stage in (prepare, baseline, pretrain, finetune, peft, evaluate, export):
            torch.manual_seed(0)
            stage.main(params)
    finally:
        os.chdir(previous)


def run_stages(folder, params, names):
    """The stage modules `names` (stages/<name>.py), each main() in turn, in `folder`."""
    import importlib

    previous = os.getcwd()
    os.chdir(folder)
    try:
        for name in names:
            torch.manual_seed(0)
            importlib.import_module(f"stages.{name}").main(params)
    finally:
        os.chdir(previous)


def metrics(folder, name):
    return json.loads((folder / "metrics" / f"{name}.json").read_text())
