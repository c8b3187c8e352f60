import pandas as pd
import pytest

from transfer.schema import UserError
from transfer.data import dataset
from tests.conftest import default_params, toy_texts


def frame(rows):
    return pd.DataFrame(rows, columns=["text", "label"])


def test_clean_strips_html_and_drops_what_cannot_be_learned():
    raw = frame([
        ["A <br /><br />fine &amp; good film", "pos"],
        ["A fine & good film", "pos"],               # duplicate once cleaned
        ["same text, two labels", "pos"],
        ["same text, two labels", "neg"],
        ["   ", "neg"],
        [None, "neg"],
        ["x" * 50, "neg"],
        ["ok", "neg"],
    ])
    cleaned, dropped = dataset.clean(raw, min_chars=3, max_chars=30)
    assert cleaned["text"].tolist() == ["A fine & good film", "x" * 30]
    assert dropped == {"missing_text_or_label": 1, "html_tags_removed": 2, "texts_with_html_removed": 1,
                       "truncated_to_max_chars": 1, "empty_or_too_short": 2, "conflicting_labels": 2, "duplicates": 1}


def test_integer_labels_become_names_in_numeric_order():
    cleaned, _ = dataset.clean(frame([[f"text number {i}", i % 11] for i in range(44)]), 3, 100)
    assert dataset.label_names(cleaned, "x") == [str(i) for i in range(11)]


def test_single_class_is_refused():
    cleaned, _ = dataset.clean(frame([[f"text {i}", "a"] for i in range(10)]), 3, 100)
    with pytest.raises(UserError, match="single class"):
        dataset.label_names(cleaned, "my.csv")


def test_split_is_disjoint_stratified_capped_and_seeded():
    texts = toy_texts(1000).rename(columns={"review": "text", "sentiment": "label"})
    cfg = {**default_params()["data"], "max_train": 100, "max_val": None, "max_test": None, "max_pool": 50}
    parts = dataset.split(texts, cfg, seed=1)
    sets = {name: set(part["text"]) for name, part in parts.items()}
    names = list(sets)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not sets[a] & sets[b], f"{a} and {b} share texts"
    assert len(parts["train"]) == 100 and len(parts["unlabeled"]) == 50
    assert len(parts["test"]) == 100 and len(parts["validation"]) == 100
    assert parts["train"]["label"].value_counts().tolist() == [50, 50]
    assert "label" not in parts["unlabeled"]
    again = dataset.split(texts, cfg, seed=1)
    assert all(again[name].equals(parts[name]) for name in parts)
    other = dataset.split(texts, cfg, seed=2)
    assert not other["train"].equals(parts["train"])


def test_read_table_suggests_close_column_names(tmp_path):
    path = tmp_path / "reviews.csv"
    toy_texts(10).to_csv(path, index=False)
    with pytest.raises(UserError, match=r"no column 'reviw'.*Did you mean 'review'.*Its columns are: review, sentiment"):
        dataset.read_table(path, "reviw", "sentiment")
    assert dataset.read_table(path, "review", "sentiment").columns.tolist() == ["text", "label"]


def test_read_table_jsonl_and_parquet(tmp_path):
    toy = toy_texts(10)
    toy.to_json(tmp_path / "r.jsonl", orient="records", lines=True)
    toy.to_parquet(tmp_path / "r.parquet")
    for name in ("r.jsonl", "r.parquet"):
        assert len(dataset.read_table(tmp_path / name, "review", "sentiment")) == 10


def test_non_utf8_file_gets_a_clear_error(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("review,sentiment\ncaf\xe9 au lait,pos\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"not valid UTF-8: byte 0xe9 at line 2, column 4 \(columns count characters "
                                        r"from 1\); re-save it as UTF-8"):
        dataset.read_table(path, "review", "sentiment")


def test_read_table_jsonl_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "r.jsonl"  # Windows Notepad saves UTF-8 with a byte-order mark; pandas refused it as JSON
    path.write_bytes(b"\xef\xbb\xbf" + toy_texts(4).to_json(orient="records", lines=True).encode("utf-8"))
    assert dataset.read_table(path, "review", "sentiment").columns.tolist() == ["text", "label"]


def test_head_tail_truncation_keeps_both_ends(tiny_bert):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    text = "good " * 20 + "the " * 50 + "bad " * 20
    ids = dataset.encode([text], tokenizer, 12, "head_tail")["input_ids"][0]
    words = tokenizer.convert_ids_to_tokens(ids)
    assert words == ["[CLS]"] + ["good"] * 5 + ["bad"] * 5 + ["[SEP]"]
    assert tokenizer.convert_ids_to_tokens(dataset.encode([text], tokenizer, 12, "tail")["input_ids"][0]) == \
        ["[CLS]"] + ["bad"] * 10 + ["[SEP]"]
    assert len(dataset.encode([text], tokenizer, 12, "head")["input_ids"][0]) == 12
