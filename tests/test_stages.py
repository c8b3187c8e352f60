"""Each stage's main() on a tiny random BERT and a toy CSV, in a scratch folder, in pipeline order."""
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from stages import evaluate, export, peft, pretrain
from transfer import machine, strategies
from transfer.training import masked_lm
from tests.conftest import metrics, toy_texts


def test_prepare_writes_disjoint_splits_and_counts(workdir):
    folder, _ = workdir
    counts = metrics(folder, "data")
    assert counts["rows"] == {"train": 160, "validation": 40, "test": 40, "unlabeled": 160}
    assert counts["rows_per_label"]["train"] == {"negative": 80, "positive": 80}
    frames = {name: pd.read_parquet(folder / "data/prepared" / f"{name}.parquet")
              for name in ("train", "validation", "test", "unlabeled")}
    texts = [set(frame["text"]) for frame in frames.values()]
    assert sum(map(len, texts)) == len(set().union(*texts)), "no text in two splits"


def test_pretrain_lowers_held_out_mlm_loss_and_keeps_the_pooler(workdir, tiny_bert):
    folder, _ = workdir
    result = metrics(folder, "pretrain")
    assert result["mlm_loss_after"] < result["mlm_loss_before"]
    assert result["perplexity_after"] < result["perplexity_before"]
    saved = load_file(folder / "models/pretrained/model.safetensors")
    base = load_file(tiny_bert / "model.safetensors")
    pooler = [key for key in base if "pooler" in key]
    assert pooler and all(torch.equal(saved[key], base[key]) for key in pooler)
    layer = next(key for key in base if "encoder.layer.0.attention.self.query.weight" in key)
    assert not torch.equal(saved[layer], base[layer]), "the encoder was trained"
    assert not list((folder / "models").rglob("*.bin")), "safetensors only"


def test_finetune_learns_the_toy_task(workdir):
    folder, _ = workdir
    result = metrics(folder, "finetune")
    assert result["val_accuracy"] >= 0.9
    assert result["trainable_fraction"] == 1.0
    timing = metrics(folder, "timing/finetune")
    assert 0 < result["epochs_run"] <= 6 and timing["train_seconds"] > 0
    assert timing["machine"] == machine.describe(), "the seconds name the machine that measured them"
    assert (folder / "models/finetuned/model.safetensors").is_file()
    assert not (folder / "checkpoints/finetune").exists(), "checkpoints are dropped after success"


def test_peft_saves_adapter_and_merged_model(workdir):
    folder, _ = workdir
    result = metrics(folder, "peft")
    assert result["strategy"] == "lora"
    assert 0 < result["trainable_fraction"] < 0.5
    assert result["trainable_params"] < result["total_params"]
    assert metrics(folder, "timing/peft")["peak_memory_mb"] > 0
    adapter = load_file(folder / "models/peft/trained/adapter_model.safetensors")
    assert any("lora_A" in key for key in adapter) and any("classifier" in key for key in adapter)
    assert (folder / "models/peft/merged/model.safetensors").is_file()
    assert not list(Path(folder).rglob("*.partial")), "no temporary output left behind"


def test_evaluate_puts_both_models_side_by_side(workdir):
    folder, _ = workdir
    result = metrics(folder, "evaluate")
    assert result["test_rows"] == 40
    for key in ("finetune", "peft"):
        assert 0.0 <= result[key]["macro_f1"] <= 1.0
        assert sum(map(sum, result[key]["confusion_matrix"])) == 40
        assert set(result[key]["per_class"]) == {"negative", "positive"}
    assert result["finetune"]["accuracy"] >= 0.9
    assert result["peft_macro_f1_vs_finetune"] == pytest.approx(  # each written at 4 significant digits
        result["peft"]["macro_f1"] / result["finetune"]["macro_f1"], rel=1e-3)
    confusion = pd.read_csv(folder / "metrics/plots/confusion_peft.csv")
    assert len(confusion) == 40 and set(confusion.columns) == {"actual", "predicted"}
    assert len(pd.read_csv(folder / "metrics/plots/per_class.csv")) == 6  # 2 classes x finetune, peft, baseline


def test_export_measures_three_runtimes(workdir):
    folder, _ = workdir
    result = metrics(folder, "export")
    accuracy = result["test_accuracy"]
    assert abs(accuracy["onnx_fp32"] - accuracy["pytorch_fp32"]) <= 0.05
    assert abs(result["int8_accuracy_drop"]) <= 0.15
    latency = metrics(folder, "timing/export")["latency_ms"]
    for batch in ("batch1", "batch32"):
        assert set(latency[batch]) == {"pytorch_fp32", "onnx_fp32", "onnx_int8"}
        assert all(ms > 0 for ms in latency[batch].values())
    assert result["size_mb"]["onnx_int8"] < result["size_mb"]["onnx_fp32"]
    assert (folder / "models/exported/model_quantized.onnx").is_file()


def curve(folder, stage, name):
    return pd.read_csv(folder / "metrics/curves" / stage / "plots/metrics" / f"{name}.tsv", sep="\t")


def test_training_curves_share_the_step_axis(workdir):
    folder, params = workdir
    for stage in ("finetune", "peft"):
        train, val = curve(folder, stage, "train/loss"), curve(folder, stage, "eval/loss")
        steps_per_epoch = 160 // params["train"]["batch_size"]
        assert list(train.columns) == ["step", "loss"] and list(val.columns) == ["step", "loss"]
        assert train["step"].is_monotonic_increasing and list(train["step"][:2]) == [1, params["train"]["logging_steps"]]
        evals = params["train"]["evals_per_epoch"]
        assert list(val["step"]) == [(i + 1) * steps_per_epoch // evals for i in range(len(val))], \
            "validation is logged evals_per_epoch times an epoch, the last at the end of its steps"
        assert train["step"].max() >= val["step"].max() and len(val) == metrics(folder, stage)["epochs_run"] * evals
        rate = curve(folder, stage, "train/learning_rate")["learning_rate"]
        assert rate.iloc[0] < rate.max() and rate.iloc[-1] < rate.max(), "warm-up, then linear decay"
        assert curve(folder, stage, "eval/macro_f1")["macro_f1"].between(0, 1).all()
    mlm = curve(folder, "pretrain", "train/loss")
    assert len(mlm) == params["pretrain"]["max_steps"] // max(1, params["pretrain"]["max_steps"] // 20)
    assert mlm["loss"].iloc[-1] < mlm["loss"].iloc[0]


def test_roc_and_precision_recall_curves_for_both_models(workdir):
    folder, _ = workdir
    result = metrics(folder, "evaluate")
    for key in ("finetune", "peft"):
        roc = pd.read_csv(folder / f"metrics/plots/roc_{key}.csv")
        assert roc["fpr"].is_monotonic_increasing and roc["tpr"].is_monotonic_increasing
        assert (roc["fpr"].iloc[0], roc["tpr"].iloc[-1]) == (0, 1) and len(roc) <= 200
        area = float(((roc["fpr"].diff().fillna(0)) * (roc["tpr"] + roc["tpr"].shift().fillna(0)) / 2).sum())
        assert result[key]["roc_auc"] == pytest.approx(area, abs=0.02), "the points trace the reported AUC"
        pr = pd.read_csv(folder / f"metrics/plots/precision_recall_{key}.csv")
        assert pr["recall"].between(0, 1).all() and pr["precision"].between(0, 1).all()
    assert result["finetune"]["roc_auc"] >= 0.9


def test_model_card_quotes_the_runs_own_numbers(workdir):
    folder, params = workdir
    card = (folder / "models/exported/README.md").read_text()
    evaluated, exported, counts = metrics(folder, "evaluate"), metrics(folder, "export"), metrics(folder, "data")
    assert card.startswith("---\n") and f"base_model: {params['model']['name']}" in card
    assert f"strategy `lora`, {metrics(folder, 'peft')['trainable_fraction']:.2%} of the parameters" in card
    assert f"Accuracy {evaluated['peft']['accuracy']:.4f}, macro-F1 {evaluated['peft']['macro_f1']:.4f}." in card
    assert f"| PyTorch fp32 | {evaluated['peft']['accuracy']:.4f} |" in card
    assert "exported because `export.source` names it" in card and "ranked by validation macro-F1" in card
    assert f"| ONNX int8 (this model) | {exported['test_accuracy']['onnx_int8']:.4f} |" in card
    assert f"{counts['rows']['train']} training" in card and "## Intended use" in card and "## Limits" in card
    for name, scores in evaluated["peft"]["per_class"].items():
        assert f"| {name} | {scores['precision']:.4f} | {scores['recall']:.4f} | {scores['f1']:.4f} |" in card
    assert "lora:\n  learning_rate:" in card and "ia3:" not in card, "the params of the strategy that ran"
    batch32 = metrics(folder, "timing/export")["latency_ms"]["batch32"]
    assert f"{batch32['onnx_int8']:.1f} ms vs\n{batch32['onnx_fp32']:.1f} ms and" in card
    int8_paid = batch32["onnx_fp32"] / batch32["onnx_int8"] >= 1.1
    assert ("it saves size here, not time" in card) != int8_paid, "the card says where int8 did not pay"


def test_pretrain_disabled_passes_the_base_model_through(workdir, tiny_bert, tmp_path, monkeypatch):
    import shutil

    folder, params = workdir
    folder = Path(shutil.copytree(folder, tmp_path / "run"))
    monkeypatch.chdir(folder)
    pretrain.main({**params, "pretrain": {**params["pretrain"], "enabled": False}})
    saved = load_file(folder / "models/pretrained/model.safetensors")
    base = load_file(tiny_bert / "model.safetensors")
    assert saved.keys() == base.keys() and all(torch.equal(saved[k], base[k]) for k in base)
    result = metrics(folder, "pretrain")
    assert result.keys() == {"enabled", "vocabulary"} and result["enabled"] is False
    assert result["vocabulary"]["added_tokens"] == 0  # toy English: the tokenizer covers it


def test_sparse_masked_lm_loss_equals_the_full_models(tiny_bert):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    model = AutoModelForMaskedLM.from_pretrained(tiny_bert).eval()
    cfg = {"mlm_probability": 0.3, "max_length": 32, "batch_size": 8}
    batch = masked_lm.fixed_masked_batches(toy_texts(8)["review"], tokenizer, cfg, seed=0)[0]
    assert masked_lm._vocabulary_head(model) is model.cls  # the sparse path is the one taken
    with torch.no_grad():
        assert masked_lm.masked_positions_loss(model, batch).item() == pytest.approx(model(**batch).loss.item(),
                                                                                       rel=1e-4)
    # and it trains the model
    before = model.bert.encoder.layer[0].attention.self.query.weight.clone()
    model.train()
    masked_lm.masked_positions_loss(model, batch).backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert not torch.equal(before, model.bert.encoder.layer[0].attention.self.query.weight)


@pytest.mark.parametrize("strategy", strategies.NAMES)
def test_every_strategy_runs_peft_evaluate_export_on_few_labels(workdir, tmp_path, monkeypatch, strategy):
    """Every strategy trains on 160 labels (the low-resource mode) and reaches an int8 ONNX model whose test
    accuracy matches the PyTorch model's, whether it folds into a plain model or not (prefix, prompt, adapters)."""
    import shutil

    folder, params = workdir
    run = tmp_path / "run"
    shutil.copytree(folder, run, ignore=shutil.ignore_patterns("exported"))
    monkeypatch.chdir(run)
    params = {**params, "strategy": strategy, "peft": {"epochs": 2},
              "adapter_stack": {**params["adapter_stack"], "domain_steps": 5, "reduction_factor": 4},
              "gradual": {**params["gradual"], "unfreeze_every": 4}}
    for stage in (peft, evaluate, export):
        torch.manual_seed(0)
        stage.main(params)
    result = metrics(run, "peft")
    assert result["strategy"] == strategy
    if strategy in ("gradual", "llrd", "scratch"):
        assert result["trainable_fraction"] == 1.0
    else:
        assert 0 < result["trainable_fraction"] < (0.6 if strategy == "partial" else 0.5)
    assert (run / "models/peft/merged").is_dir() == strategies.mergeable(strategy)
    assert metrics(run, "evaluate")["strategy"] == strategy
    exported = metrics(run, "export")
    assert exported["model"] == strategy and exported["exported"] == "peft"
    accuracy = exported["test_accuracy"]
    assert abs(accuracy["onnx_fp32"] - accuracy["pytorch_fp32"]) <= 0.05, "the ONNX graph computes the same model"
    if strategy == "gradual":  # one more layer every 4 steps, from the head alone up to all 4 layers
        unfrozen = pd.read_csv(run / "metrics/curves/peft/plots/metrics/train/unfrozen_layers.tsv", sep="\t")
        assert unfrozen["unfrozen_layers"].is_monotonic_increasing
        assert (unfrozen["unfrozen_layers"].iloc[0], unfrozen["unfrozen_layers"].iloc[-1]) == (0, 4)
    assert (run / "models/exported/model_quantized.onnx").is_file()
    assert (run / "models/exported/tokenizer.json").is_file() or (run / "models/exported/vocab.txt").is_file()
