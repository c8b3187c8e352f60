"""pretrain.extend_vocab: characters the tokenizer can only call unknown become tokens with rows of their own, which
pretraining trains and the classifier learns from; on text the tokenizer covers, nothing changes."""
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, BertForMaskedLM

from stages import finetune, peft, prepare, pretrain
from transfer.config import validate
from transfer.data import coverage, vocabulary
from tests.conftest import metrics, tiny_params, toy_texts

GOOD, BAD, PLAIN = "好棒赞美爱乐", "差坏烂丑恨慢", "的了是在我他书这个很"


def chinese_texts(count, seed=0):
    """Toy reviews in Chinese characters (all unknown to the tiny BERT's word vocabulary); the label follows the
    sentiment characters each holds. No row number: its digits would give the label away."""
    return toy_texts(count, seed, list(GOOD), list(BAD), list(PLAIN), separator="", numbered=False)


def test_uncovered_characters_come_most_frequent_first_within_the_limits(tiny_bert):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    texts = ["好好好 good", "好坏坏 great", "差 fine", "the 好"]
    assert vocabulary.uncovered_characters(texts, tokenizer, max_new=10, min_count=1) == ["好", "坏", "差"]
    assert vocabulary.uncovered_characters(texts, tokenizer, max_new=10, min_count=2) == ["好", "坏"]
    assert vocabulary.uncovered_characters(texts, tokenizer, max_new=1, min_count=1) == ["好"]
    assert vocabulary.uncovered_characters(["good great fine"], tokenizer, 10, 1) == []
    slow = AutoTokenizer.from_pretrained(tiny_bert, use_fast=False)  # no offsets: the characters alone decide
    assert vocabulary.uncovered_characters(["好好好 的", "好坏坏 great"], slow, 10, 1) == ["好", "坏", "的"]


def test_added_tokens_get_distinct_rows_in_the_embeddings_and_the_tied_output_layer(tiny_bert):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    model = BertForMaskedLM.from_pretrained(tiny_bert)
    old_rows = model.get_input_embeddings().weight.detach().clone()
    texts = chinese_texts(40)["review"].tolist()
    assert coverage.measure(texts, tokenizer)["unknown_token_rate"] > 0.5
    chars = vocabulary.uncovered_characters(texts, tokenizer, max_new=100, min_count=1)
    assert sorted(chars) == sorted(set(GOOD + BAD + PLAIN))
    rows = vocabulary.add_tokens(tokenizer, model, chars)
    assert rows == len(tokenizer) == len(old_rows) + len(chars) == model.config.vocab_size
    embeddings = model.get_input_embeddings().weight
    assert torch.equal(embeddings[:len(old_rows)], old_rows), "the old rows stay as they were"
    new = embeddings[len(old_rows):]
    assert torch.cdist(new, new).add(torch.eye(len(chars)) * 1e9).min() > 1e-3, "each new row is its own"
    assert model.get_output_embeddings().weight.data_ptr() == embeddings.data_ptr()  # tied: the decoder follows
    assert model.get_output_embeddings().bias.shape == (rows,)
    assert coverage.measure(texts, tokenizer)["unknown_token_rate"] == 0
    ids = tokenizer("好差", add_special_tokens=False)["input_ids"]
    assert ids == [tokenizer.convert_tokens_to_ids("好"), tokenizer.convert_tokens_to_ids("差")]
    assert model(**tokenizer(["好差的"], return_tensors="pt")).logits.shape[-1] == rows


@pytest.mark.parametrize("setting", ["auto", False])
def test_covered_text_or_extend_vocab_false_changes_nothing(tiny_bert, setting):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    model = BertForMaskedLM.from_pretrained(tiny_bert)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    cfg = {"extend_vocab": setting, "new_tokens_max": 100, "new_tokens_min_count": 1}
    texts = toy_texts(40)["review"].tolist() if setting == "auto" else chinese_texts(40)["review"].tolist()
    report = vocabulary.extend(tokenizer, model, texts, cfg, max_unknown_rate=0.05)
    assert report["added_tokens"] == 0
    assert report["vocabulary_size"] == len(tokenizer) == len(before["bert.embeddings.word_embeddings.weight"])
    assert report["unknown_token_rate_after"] == report["unknown_token_rate_before"]
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())


def run_stages(folder, tiny_bert, monkeypatch, stages=(prepare, pretrain, finetune), **pretrain_cfg):
    folder.mkdir()
    chinese_texts(400).to_csv(folder / "reviews.csv", index=False)
    params = tiny_params(tiny_bert, folder / "reviews.csv")
    params["pretrain"].update(pretrain_cfg)
    params = validate(params)
    monkeypatch.chdir(folder)
    for stage in stages:
        torch.manual_seed(0)
        stage.main(params)
    return folder


def test_the_classifier_learns_text_the_base_vocabulary_cannot_see(tiny_bert, tmp_path, monkeypatch):
    """All-unknown text collapses the classifier to one class; with the characters added (extend_vocab: auto, the
    default, fires at 100% unknown), pretraining trains their rows and the fine-tune learns the task."""
    plain = run_stages(tmp_path / "plain", tiny_bert, monkeypatch, extend_vocab=False)
    assert metrics(plain, "finetune")["val_accuracy"] <= 0.6  # every input is the same row of [UNK]s
    extended = run_stages(tmp_path / "extended", tiny_bert, monkeypatch, (prepare, pretrain, finetune, peft),
                          extend_vocab="auto")
    added = metrics(extended, "pretrain")["vocabulary"]
    assert added["added_tokens"] == len(set(GOOD + BAD + PLAIN))
    assert added["unknown_token_rate_before"] > 0.8 and added["unknown_token_rate_after"] == 0
    assert metrics(extended, "finetune")["val_accuracy"] >= 0.9

    tokenizer = AutoTokenizer.from_pretrained(extended / "models/pretrained")
    assert tokenizer.unk_token_id not in tokenizer("好坏的", add_special_tokens=False)["input_ids"]
    saved = load_file(extended / "models/pretrained/model.safetensors")["embeddings.word_embeddings.weight"]
    assert saved.shape[0] == len(tokenizer)

    # lora (lora.train_added_tokens: true) trains the added rows and leaves every other embedding row as it was
    merged = load_file(extended / "models/peft/merged/model.safetensors")["bert.embeddings.word_embeddings.weight"]
    first_new = saved.shape[0] - added["added_tokens"]
    assert torch.equal(merged[:first_new], saved[:first_new])
    assert not torch.isclose(merged[first_new:], saved[first_new:]).all(dim=1).any(), "every added row trained"
    assert metrics(extended, "peft")["val_accuracy"] >= 0.9

    # the added rows trained in pretrain: the same seed without pretraining leaves them as drawn
    untrained = run_stages(tmp_path / "untrained", tiny_bert, monkeypatch, extend_vocab="auto", enabled=False)
    drawn = load_file(untrained / "models/pretrained/model.safetensors")["embeddings.word_embeddings.weight"]
    assert drawn.shape == saved.shape
    assert not torch.allclose(drawn[first_new:], saved[first_new:])


def test_the_model_card_drops_the_unknown_token_concern_only_where_the_added_tokens_settled_it():
    from transfer.export.card import settled_by_vocabulary

    unknown = {"kind": "tokenizer_unknown_tokens", "unknown_token_rate": 0.64, "threshold": 0.05, "message": "..."}
    few = {"kind": "few_training_rows", "message": "..."}
    data = {"rows": {}, "warnings": [unknown, few]}
    settled = {"vocabulary": {"added_tokens": 1451, "unknown_token_rate_after": 0.011}}
    assert settled_by_vocabulary(data, settled)["warnings"] == [few]
    still = {"vocabulary": {"added_tokens": 20, "unknown_token_rate_after": 0.3}}
    assert settled_by_vocabulary(data, still)["warnings"] == [unknown, few]
    assert settled_by_vocabulary(data, {"vocabulary": {"added_tokens": 0}})["warnings"] == [unknown, few]
    assert settled_by_vocabulary(data, {"enabled": False})["warnings"] == [unknown, few]  # a run from before
