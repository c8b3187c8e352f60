"""Quality on the user's own data: the TF-IDF baseline, the guards, class weights, tokenizer coverage, cleaning."""
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from transfer.baselines import tfidf
from transfer.config import validate
from transfer.schema import UserError
from transfer.data import coverage, dataset
from transfer.evaluation import quality
from transfer.tasks.classification import classification_report
from transfer.training.classifier import ResumableTrainer, class_weights
from tests.conftest import default_params, metrics, toy_texts


def labelled(frame):
    return frame.rename(columns={"review": "text", "sentiment": "label"})


# cleaning ---------------------------------------------------------------------------------------------------------

def test_cleaning_removes_real_tags_only_and_counts_them():
    raw = pd.DataFrame({"text": ["Write to <jane.doe@example.com> or see <https://example.org/x> <3",
                                 "A <br /><br />fine <a href=\"x\">film</a><!-- note -->!",
                                 "if a < b and c > d, or x<5 and y>2"],
                        "label": ["a", "b", "a"]})
    cleaned, dropped = dataset.clean(raw, min_chars=1, max_chars=1000)
    assert cleaned["text"].tolist() == ["Write to <jane.doe@example.com> or see <https://example.org/x> <3",
                                        "A fine film !", "if a < b and c > d, or x<5 and y>2"]
    assert dropped["html_tags_removed"] == 5 and dropped["texts_with_html_removed"] == 1


def test_default_min_chars_keeps_a_short_chinese_review():
    raw = pd.DataFrame({"text": ["很好", "质量太差了", ""], "label": ["pos", "neg", "neg"]})
    cleaned, dropped = dataset.clean(raw, default_params()["data"]["min_chars"], 1000)
    assert cleaned["text"].tolist() == ["很好", "质量太差了"] and dropped["empty_or_too_short"] == 1


# splits that keep rare classes ------------------------------------------------------------------------------------

def imbalanced(counts, seed=0):
    rows = [{"text": f"{label} text number {i} {seed}", "label": label}
            for label, count in counts.items() for i in range(count)]
    return pd.DataFrame(rows)


def test_capped_train_keeps_rare_classes_up_to_the_floor():
    frame = imbalanced({"big": 5000, "mid": 800, "rare": 90, "tiny": 20})
    cfg = {**default_params()["data"], "max_train": 500, "min_train_per_class": 50}
    parts = dataset.split(frame, cfg, seed=3)
    counts = parts["train"]["label"].value_counts()
    assert len(parts["train"]) == 500
    assert counts["rare"] >= 50 - 1 or counts["rare"] == (parts["train"]["label"] == "rare").sum()
    assert counts["rare"] >= 40 and counts["tiny"] >= 8, counts.to_dict()
    plain = dataset.take(parts["train"].assign(label="x"), 10, 0)[0]
    assert len(plain) == 10
    warnings = dataset.split_warnings(parts, ["big", "mid", "rare", "tiny"], 50)
    thin = next(w for w in warnings if w["kind"] == "few_training_rows")
    assert "tiny" in thin["classes"] and "big" not in thin["classes"]


def test_a_class_with_one_or_two_rows_always_trains_and_is_named_untested():
    frame = pd.concat([labelled(toy_texts(60)), pd.DataFrame({"text": ["lonely a", "lonely b", "solo"],
                                                              "label": ["pair", "pair", "single"]})],
                      ignore_index=True)
    cfg = {**default_params()["data"], "max_train": None, "max_val": None, "max_test": None, "max_pool": None}
    for seed in range(20):
        parts = dataset.split(frame, cfg, seed)
        assert {"pair", "single"} <= set(parts["train"]["label"]), f"seed {seed} lost a rare class from train"
        untested = [w for w in dataset.split_warnings(parts, sorted(set(frame["label"])), 1)
                    if w["kind"] == "classes_not_tested"]
        assert untested and "single" in untested[0]["classes"]


def test_max_train_below_the_class_count_is_refused():
    frame = imbalanced({str(i): 20 for i in range(5)})
    cfg = {**default_params()["data"], "max_train": 3}
    with pytest.raises(UserError, match="data.max_train is 3 but the data has 5 classes"):
        dataset.split(frame, cfg, 0)


# class weights ----------------------------------------------------------------------------------------------------

def test_class_weights_are_balanced_for_uneven_classes_only():
    assert class_weights([0, 1] * 50, 2, "auto") is None
    assert class_weights([0] * 90 + [1] * 10, 2, "none") is None
    weights = class_weights([0] * 90 + [1] * 10, 2, "auto")
    assert torch.allclose(weights, torch.tensor([100 / (2 * 90), 100 / (2 * 10)]))


def test_weighted_loss_is_each_rows_cross_entropy_times_its_class_weight_over_the_steps_rows(tiny_bert):
    """Averaged over the rows of the optimizer step (the Trainer's num_items_in_batch where it counts them, else this
    batch's), so batches accumulated into one step train as the bigger batch (tests/test_compute.py)."""
    from transformers import AutoModelForSequenceClassification, TrainingArguments

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    args = TrainingArguments(output_dir="unused", report_to=[], use_cpu=True)
    inputs = {"input_ids": torch.tensor([[2, 6, 7, 3], [2, 16, 17, 3], [2, 8, 9, 3]]),
              "attention_mask": torch.ones(3, 4, dtype=torch.long), "labels": torch.tensor([0, 1, 1])}
    weights = torch.tensor([0.25, 4.0])
    model.eval()
    with torch.no_grad():
        logits = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits
        trainer = ResumableTrainer(model=model, args=args, class_weights=weights)
        weighted = trainer.compute_loss(model, dict(inputs))
        over_six_rows = trainer.compute_loss(model, dict(inputs), num_items_in_batch=torch.tensor(6))
        plain = ResumableTrainer(model=model, args=args).compute_loss(model, dict(inputs))
    per_row = torch.nn.functional.cross_entropy(logits, inputs["labels"], reduction="none")
    row_weights = weights[inputs["labels"]]
    assert torch.allclose(weighted, (per_row * row_weights).sum() / 3, atol=1e-6)
    assert torch.allclose(over_six_rows, (per_row * row_weights).sum() / 6, atol=1e-6)
    assert torch.allclose(plain, per_row.mean(), atol=1e-6)
    assert not torch.allclose(weighted, plain, atol=1e-3), "the weights change the loss"


# tokenizer coverage -----------------------------------------------------------------------------------------------

def test_coverage_is_poor_for_a_script_the_tokenizer_lacks(tiny_bert):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    english = coverage.measure(labelled(toy_texts(50))["text"], tokenizer)
    chinese = coverage.measure(["这部电影很好看", "质量太差了，不推荐", "服务周到，下次还来"], tokenizer)
    assert english["unknown_token_rate"] == 0 and english["language"] == "en" and english["script"] == "LATIN"
    assert chinese["unknown_token_rate"] > 0.9 and chinese["script"] == "CJK" and chinese["language"] == "zh"
    kinds = [w["kind"] for w in coverage.warnings(chinese, 0.05, 2.0, "tiny")]
    assert kinds == ["tokenizer_unknown_tokens"]
    assert coverage.warnings(english, 0.05, 2.0, "tiny") == []


def test_coverage_counts_words_split_into_many_pieces(tiny_bert):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    digits = coverage.measure(["1234 5678 9012", "31415 2718"], tokenizer)  # '1', '##2', '##3', ...: 4-5 per word
    assert digits["unknown_token_rate"] == 0 and digits["tokens_per_word"] > 4
    assert [w["kind"] for w in coverage.warnings(digits, 0.05, 2.0, "tiny")] == ["tokenizer_splits_words"]
    assert coverage.word_count("这部电影 very good") == 6


# the baseline -----------------------------------------------------------------------------------------------------

def test_baseline_learns_and_reloads_from_plain_files_without_pickle(tmp_path):
    frame = labelled(toy_texts(200))
    labels = (frame["label"] == "positive").astype(int)
    cfg = default_params()["baseline"]
    model = tfidf.fit(frame["text"][:150], labels[:150], 2, cfg, seed=0)
    held_out = model.predict_proba(frame["text"][150:]).argmax(axis=1)
    assert (held_out == labels[150:].to_numpy()).mean() >= 0.9
    tfidf.save(model, tmp_path / "baseline")
    assert sorted(p.name for p in (tmp_path / "baseline").iterdir()) == ["vocabulary.json", "weights.npz"]
    again = tfidf.load(tmp_path / "baseline")  # np.load(allow_pickle=False) inside: no pickle read
    assert np.allclose(again.predict_proba(frame["text"]), model.predict_proba(frame["text"]))


# the guards -------------------------------------------------------------------------------------------------------

def report_of(labels, predictions, names=("neg", "pos", "mid")):
    return classification_report(np.array(labels), np.array(predictions), list(names))


def test_guard_names_single_class_never_predicted_and_below_baseline():
    labels = [0, 1, 2] * 10
    single = quality.guard("finetune", report_of(labels, [1] * 30), ["neg", "pos", "mid"], "test", "lora")
    assert [w["kind"] for w in single] == ["single_class"] and single[0]["predicted_class"] == "pos"
    assert "finetune.learning_rate" in single[0]["message"]
    never = quality.guard("peft", report_of(labels, [0, 1, 1] * 10), ["neg", "pos", "mid"], "test", "lora")
    assert [w["kind"] for w in never] == ["class_never_predicted"] and never[0]["classes"] == ["mid"]
    assert "peft.epochs" in never[0]["message"]
    good = report_of(labels, labels)
    assert quality.guard("peft", good, ["neg", "pos", "mid"], "test", "lora", baseline=good) == []
    below = quality.guard("peft", report_of(labels, [0, 1, 2] * 9 + [1, 1, 1]), ["neg", "pos", "mid"], "test",
                          "lora", baseline=good)
    assert [w["kind"] for w in below] == ["below_baseline"] and below[0]["gap"] > 0
    assert "lora" in below[0]["message"] and "baseline" in below[0]["message"]


def collapse_transformers(monkeypatch):
    """Make every transformer the pipeline trains answer one class: a one-sided head and a learning rate of ~0."""
    from transfer import modeling

    load = modeling.load_classifier

    def one_sided(*args, **kwargs):  # a head that answers 'negative' for every text; lr ~0 keeps it there
        model = load(*args, **kwargs)
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.copy_(torch.tensor([5.0, 0.0]))
        return model

    monkeypatch.setattr(modeling, "load_classifier", one_sided)


def test_a_collapsed_model_is_flagged_in_metrics_card_and_export(workdir, tmp_path, monkeypatch, capsys):
    """Evaluate and export a full fine-tune whose classifier always answers one class (zero weights, a bias)."""
    from safetensors.torch import load_file, save_file

    from stages import evaluate, export

    folder, params = workdir
    run = tmp_path / "run"
    shutil.copytree(folder, run)
    weights_file = run / "models/finetuned/model.safetensors"
    weights = load_file(weights_file)
    weights["classifier.weight"] = torch.zeros_like(weights["classifier.weight"])
    weights["classifier.bias"] = torch.tensor([5.0, 0.0])
    save_file(weights, weights_file, metadata={"format": "pt"})
    monkeypatch.chdir(run)
    collapsed = validate({**params, "export": {**params["export"], "source": "finetune"}})
    evaluate.main(collapsed)
    found = metrics(run, "evaluate")["warnings"]
    assert {(w["kind"], w["model"]) for w in found} >= {("single_class", "finetune"), ("below_baseline", "finetune")}
    assert not [w for w in found if w["model"] == "peft" and w["kind"] == "single_class"]
    assert "WARNING (evaluate)" in capsys.readouterr().out
    export.main(collapsed)
    card = (run / "models/exported/README.md").read_text()
    assert card.index("## Not recommended") < card.index("## Files") and "single_class" in card
    assert "NOT RECOMMENDED" in capsys.readouterr().out
    assert (run / "models/exported/model_quantized.onnx").is_file(), "export still writes its files"
    with pytest.raises(SystemExit, match="evaluate.fail_on_warning is true"):
        evaluate.main(validate({**collapsed, "evaluate": {**params["evaluate"], "fail_on_warning": True}}))


def test_training_with_learning_rate_zero_warns_after_training(workdir, tmp_path, monkeypatch, capsys):
    from stages import finetune

    folder, params = workdir
    run = tmp_path / "run"
    shutil.copytree(folder, run)
    monkeypatch.chdir(run)
    collapse_transformers(monkeypatch)
    stuck = validate({**params, "finetune": {"epochs": 1, "learning_rate": 1e-12}})
    finetune.main(stuck)
    result = metrics(run, "finetune")
    assert [w["kind"] for w in result["warnings"]] == ["single_class"]
    assert result["warnings"][0]["split"] == "validation"
    assert "WARNING (finetune)" in capsys.readouterr().out


def test_evaluate_holds_the_baseline_beside_both_models(workdir):
    folder, _ = workdir
    result = metrics(folder, "evaluate")
    assert {"finetune", "peft", "baseline"} <= set(result)
    assert 0.5 < result["baseline"]["macro_f1"] <= 1 and result["quality_warnings"] == len(result["warnings"])
    assert metrics(folder, "baseline")["test_macro_f1"] == pytest.approx(result["baseline"]["macro_f1"])
    assert (folder / "metrics/plots/confusion_baseline.csv").is_file()
    text = quality.report(result)
    assert "baseline (TF-IDF)" in text and "worst classes" in text
    assert metrics(folder, "data")["coverage"]["unknown_token_rate"] == 0


# the leaderboard and `export.source: best` ------------------------------------------------------------------------

def test_leaderboard_ranks_by_validation_macro_f1_and_never_picks_the_dummy():
    from transfer.evaluation import leaderboard

    report = report_of([0, 1, 2] * 4, [0, 1, 2] * 4)
    rows = {"finetune": leaderboard.row("full fine-tune", 0.80, report, 86.0),
            "peft": leaderboard.row("lora", 0.85, report, 86.0),
            "baseline": leaderboard.row("TF-IDF baseline", 0.85, report, 3.0),
            "majority": leaderboard.row("majority class", 0.95, report, 0.0)}
    board = leaderboard.ranked(rows)
    assert [key for key, r in board.items() if isinstance(r, dict)] == ["majority", "baseline", "peft", "finetune"]
    assert board["best"] == "baseline", "the dummy never wins; a tie goes to the smaller model"
    assert leaderboard.margin(board, "baseline") == ("peft", 0)


def test_best_exports_the_baseline_when_the_transformers_lose(workdir, tmp_path, monkeypatch, capsys):
    from stages import evaluate, export, finetune, peft, predict

    folder, params = workdir
    run = tmp_path / "run"
    shutil.copytree(folder, run, ignore=shutil.ignore_patterns("exported"))
    monkeypatch.chdir(run)
    collapse_transformers(monkeypatch)
    weak = validate({**params, "finetune": {"epochs": 1, "learning_rate": 1e-12}, "peft": {"epochs": 1},
                     "lora": {**params["lora"], "learning_rate": 1e-12},
                     "export": {**params["export"], "source": "best"}})
    for stage in (finetune, peft, evaluate, export):
        stage.main(weak)
    board = metrics(run, "leaderboard")
    assert board["best"] == "baseline" and board["baseline"]["rank"] < board["finetune"]["rank"]
    assert {"finetune", "peft", "baseline", "majority"} <= set(board)
    exported = metrics(run, "export")
    assert exported["exported"] == "baseline" and exported["source"] == "best"
    assert sorted(p.name for p in (run / "models/exported").iterdir()) == [
        "README.md", "inference.json", "vocabulary.json", "weights.npz"], "plain files: no pickle, no ONNX"
    card = (run / "models/exported/README.md").read_text()
    first = card.split("---\n", 2)[2].strip().splitlines()
    assert first[2].startswith("**TF-IDF baseline**, exported because it has the best validation macro-F1")
    assert "lost to a bag-of-words model" in first[2] and "data.max_train" in first[2]
    assert "library_name: scikit-learn" in card
    out = capsys.readouterr().out
    assert "export: TF-IDF baseline (baseline; export.source: best)" in out
    (tmp_path / "new.txt").write_text("good great fine lovely\nbad awful poor boring\n", encoding="utf-8")
    predict.main([str(tmp_path / "new.txt"), "--model", str(run / "models/exported")])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["positive", "negative"]


def test_a_perturbed_int8_model_trips_the_export_guard(workdir, tmp_path, monkeypatch, capsys):
    import onnx
    from onnx import numpy_helper

    from stages import export
    from transfer.export import onnx_model

    folder, params = workdir
    run = tmp_path / "run"
    shutil.copytree(folder, run, ignore=shutil.ignore_patterns("exported"))
    monkeypatch.chdir(run)
    quantize = onnx_model.quantize_int8

    def perturbed(onnx_dir, *args):  # quantize, then scale the classifier's bias so that the int8 model leans to one class
        path, kind = quantize(onnx_dir, *args)
        model = onnx.load(path)
        bias = next(t for t in model.graph.initializer if "classifier" in t.name and "bias" in t.name)
        values = numpy_helper.to_array(bias).copy()
        values[0] += 50.0
        bias.CopyFrom(numpy_helper.from_array(values, bias.name))
        onnx.save(model, path)
        return path, kind

    monkeypatch.setattr(onnx_model, "quantize_int8", perturbed)
    export.main(params)
    result = metrics(run, "export")
    assert result["int8_check"]["agreement"] < 0.9
    assert [w["kind"] for w in result["warnings"]] == ["int8_recall_drop"]
    assert result["int8_check"]["recall_drop"]["positive"] > params["export"]["max_recall_drop"]
    assert "int8_recall_drop" in (run / "models/exported/README.md").read_text()
    assert "WARNING (export)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="int8 check warned"):
        export.main(validate({**params, "evaluate": {**params["evaluate"], "fail_on_warning": True}}))
    check, warnings = export.int8_check(np.array([0, 1, 1, 1]), np.array([0, 1, 1, 1]), np.array([0, 1, 1, 1]),
                                        ["negative", "positive"], 0.05)
    assert check["agreement"] == 1 and warnings == []
