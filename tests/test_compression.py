"""Compression of the full fine-tune (params compress, transfer/export/compression.py, stages/compress.py): a student
with fewer layers that starts from the teacher's and learns its outputs, and magnitude pruning whose zeros stay zero."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from stages import check, compress, predict
from transfer import modeling, pooling
from transfer.export import compression
from transfer.modeling import load_classifier, load_saved_classifier, load_tokenizer, save
from transfer.schema import UserError
from transfer.strategies._layerwise import encoder_layers
from transfer.training.classifier import train_classifier
from tests.conftest import metrics
from tests.test_compute import HeadDtypes, as_on_a_gpu
from tests.test_training_controls import NAMES, toy_params, toy_parts


def tokens(tiny_bert, texts=("good great fine movie", "bad awful the plot was dull")):
    return load_tokenizer(str(tiny_bert))(list(texts), padding=True, return_tensors="pt")


def teacher_of(tiny_bert, pooling_kind="mean"):
    torch.manual_seed(0)
    return pooling.apply(load_classifier(str(tiny_bert), NAMES), pooling_kind).eval()


@pytest.mark.parametrize("total, keep, kept", [(6, 3, [1, 3, 5]), (4, 2, [1, 3]), (12, 4, [2, 5, 8, 11]),
                                               (6, 1, [5]), (6, 5, [0, 1, 3, 4, 5])])
def test_the_student_keeps_evenly_spaced_layers_up_to_the_top(total, keep, kept):
    assert compression.kept_layers(total, keep) == kept


@pytest.mark.parametrize("keep", [0, 4, 7])
def test_a_student_as_deep_as_the_teacher_is_refused(keep):
    with pytest.raises(UserError, match=r"compress.student_layers is %d; .* 4 layers, .* between 1 and 3" % keep):
        compression.kept_layers(4, keep)


def test_the_student_starts_from_the_teachers_layers_and_saves_as_any_model(tiny_bert, tmp_path):
    teacher = teacher_of(tiny_bert)
    student, kept = compression.student_from(teacher, 2)
    assert kept == [1, 3] and len(encoder_layers(teacher)) == 4 and len(encoder_layers(student)) == 2
    for layer, index in zip(encoder_layers(student), kept):
        ours, theirs = layer.state_dict(), encoder_layers(teacher)[index].state_dict()
        assert all(torch.equal(ours[key], theirs[key]) for key in theirs)
        theirs = encoder_layers(teacher)[index].parameters()
        assert all(p.data_ptr() != q.data_ptr() for p, q in zip(layer.parameters(), theirs))  # copies, not shared
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    assert all(p.requires_grad for p in student.parameters())
    save(student, load_tokenizer(str(tiny_bert)), tmp_path / "student")
    loaded = load_saved_classifier(tmp_path / "student").eval()
    assert loaded.config.num_hidden_layers == 2 and pooling.pools_mean(loaded)
    batch = tokens(tiny_bert)
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).logits, student.eval()(**batch).logits, atol=1e-6)
        assert not torch.allclose(student(**batch).logits, teacher(**batch).logits, atol=1e-3)  # two layers fewer


def test_pruning_zeros_the_smallest_encoder_weights_and_nothing_else(tiny_bert):
    teacher = teacher_of(tiny_bert)
    pruned = compression.make_permanent(compression.pruned_copy(teacher, 0.6))
    assert compression.zero_share(pruned) == pytest.approx(0.6, abs=1e-3)
    assert compression.zero_share(teacher) < 0.01  # the teacher keeps its weights
    kept = torch.cat([m.weight.flatten().abs() for m, _ in compression.prunable_weights(pruned)])
    original = torch.cat([m.weight.flatten().abs() for m, _ in compression.prunable_weights(teacher)])
    assert original[kept == 0].max() <= original[kept != 0].min()  # the smallest went
    for name in ("bert.embeddings.word_embeddings.weight", "classifier.weight",
                 "bert.encoder.layer.0.output.dense.bias"):
        assert torch.equal(pruned.get_parameter(name), teacher.get_parameter(name))


def test_the_distillation_loss_is_cross_entropy_or_divergence_as_alpha_says():
    torch.manual_seed(0)
    student, teacher, labels = torch.randn(8, 3), torch.randn(8, 3), torch.randint(0, 3, (8,))
    ce = torch.nn.functional.cross_entropy(student, labels)
    assert torch.allclose(compression.distillation_loss(student, teacher, labels, 2.0, 0.0), ce)
    assert compression.distillation_loss(teacher, teacher, labels, 2.0, 1.0).abs() < 1e-6
    assert compression.distillation_loss(student, teacher, labels, 2.0, 1.0) > 0.01


def divergence(student, teacher, batch):
    with torch.no_grad():
        return float(compression.distillation_loss(student.eval()(**batch).logits, teacher(**batch).logits,
                                                   torch.zeros(len(batch["input_ids"]), dtype=torch.long), 1.0, 1.0))


def distil(model, teacher, tiny_bert, tmp_path, epochs=3, alpha=1.0):
    params = toy_params(early_stopping_patience=epochs)
    return train_classifier(model, load_tokenizer(str(tiny_bert)), toy_parts(train=96), params, epochs, 2e-3,
                            tmp_path / "ckpt", trainer_class=compression.DistillingTrainer,
                            trainer_options={"teacher": teacher, "temperature": 2.0, "alpha": alpha})


def test_the_student_learns_the_teachers_outputs_and_the_teacher_stays(tiny_bert, tmp_path):
    teacher = teacher_of(tiny_bert)
    before_teacher = {k: v.clone() for k, v in teacher.state_dict().items()}
    student, _ = compression.student_from(teacher, 1)
    batch = tokens(tiny_bert, toy_parts(train=96)["train"]["text"].head(32).tolist())
    start = divergence(student, teacher, batch)
    distil(student, teacher, tiny_bert, tmp_path)
    assert divergence(student, teacher, batch) < 0.5 * start
    assert all(torch.equal(v, before_teacher[k]) for k, v in teacher.state_dict().items())


def test_a_pruned_model_trains_on_with_its_zeros_held(tiny_bert, tmp_path):
    teacher = teacher_of(tiny_bert, "cls")
    model = compression.pruned_copy(teacher, 0.5)
    zeros = [(m.weight == 0).clone() for m, _ in compression.prunable_weights(model)]
    before = [m.weight.detach().clone() for m, _ in compression.prunable_weights(model)]
    distil(model, teacher, tiny_bert, tmp_path, epochs=1, alpha=0.5)
    compression.make_permanent(model)
    after = [m.weight for m, _ in compression.prunable_weights(model)]
    assert all(torch.all(w[z] == 0) for w, z in zip(after, zeros))
    assert any(not torch.equal(w[~z], b[~z]) for w, z, b in zip(after, zeros, before))  # the rest trained
    assert compression.zero_share(model) == pytest.approx(0.5, abs=1e-3)


def test_the_teacher_runs_under_the_training_autocast(tiny_bert, tmp_path, monkeypatch):
    as_on_a_gpu(monkeypatch, compression.DistillingTrainer)
    teacher = teacher_of(tiny_bert)
    spy = HeadDtypes(teacher.classifier)
    params = toy_params()
    params["compute"]["precision"] = "bf16"
    student, _ = compression.student_from(teacher, 2)
    train_classifier(student, load_tokenizer(str(tiny_bert)), toy_parts(train=32), params, 1, 1e-3, tmp_path / "c",
                     callbacks=[spy], trainer_class=compression.DistillingTrainer,
                     trainer_options={"teacher": teacher, "temperature": 2.0, "alpha": 0.5})
    assert spy.seen and {dtype for dtype, _ in spy.seen} == {torch.bfloat16}


@pytest.fixture(scope="module")
def compressed(workdir, tmp_path_factory):
    folder, params = workdir
    folder = Path(shutil.copytree(folder, tmp_path_factory.mktemp("compress") / "run"))
    params = {**params, "compress": {**params["compress"], "distill": True, "prune": True, "student_layers": 2,
                                     "epochs": 4, "prune_epochs": 2, "learning_rate": 2e-3}}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        compress.main(params)
    return folder, params


def test_the_stage_measures_each_compressed_model_beside_the_teacher(compressed):
    folder, _ = compressed
    result, timing = metrics(folder, "compress"), metrics(folder, "timing/compress")
    assert result["variants"] == ["distilled", "pruned"]
    teacher, student, pruned = result["teacher"], result["distilled"], result["pruned"]
    assert student["total_params"] < teacher["total_params"] and student["training"]["teacher_layers_kept"] == [1, 3]
    assert pruned["zero_share"] == pytest.approx(0.5, abs=1e-3) and pruned["total_params"] == teacher["total_params"]
    assert pruned["zipped_mb"]["onnx_fp32"] < teacher["zipped_mb"]["onnx_fp32"]  # the zeros compress
    for figures in (teacher, student, pruned):
        assert figures["test_accuracy"]["pytorch_fp32"] >= 0.8  # the toy task is easy; none collapsed
        assert abs(figures["test_accuracy"]["onnx_fp32"] - figures["test_accuracy"]["pytorch_fp32"]) < 0.03
    for name in ("teacher", "distilled", "pruned"):
        assert set(timing[name]["batch32"]) == {"pytorch_fp32", "onnx_fp32", "onnx_int8"}
    assert timing["distilled"]["int8_speedup_batch32_vs_teacher_fp32"] > 0


def test_a_compressed_model_is_a_folder_predict_takes(compressed):
    folder, params = compressed
    texts = ["good great fine lovely the movie", "bad awful dull the plot"]
    for name in ("distilled", "pruned"):
        path = folder / "models/compressed" / name
        onnx = predict.load_classifier(path, "fp32")
        pytorch = modeling.predict(load_saved_classifier(path), onnx.tokenizer, texts, onnx.max_length,
                                   truncation=onnx.truncation)
        assert np.allclose(onnx.probabilities(texts), pytorch, atol=1e-4)
        assert [onnx.labels[i] for i in predict.load_classifier(path).probabilities(texts).argmax(axis=1)] == \
            ["positive", "negative"]


def test_compression_off_trains_nothing_and_says_how_to_turn_it_on(workdir, tmp_path, monkeypatch):
    folder, params = workdir
    monkeypatch.chdir(shutil.copytree(folder, tmp_path / "run"))
    compress.main(params)
    assert metrics(Path("."), "compress") == {"variants": []}
    assert "compress.distill" in Path("models/compressed/README.md").read_text()


def test_a_student_too_deep_is_refused_before_anything_is_written(workdir, tmp_path, monkeypatch):
    folder, params = workdir
    monkeypatch.chdir(shutil.copytree(folder, tmp_path / "run"))
    with pytest.raises(UserError, match="compress.student_layers is 4"):
        compress.main({**params, "compress": {**params["compress"], "distill": True, "student_layers": 4}})
    assert not Path("models/compressed").exists() and not Path("checkpoints/compress").exists()


def test_check_refuses_a_student_as_deep_as_the_model_before_any_stage_runs(workdir, tmp_path, monkeypatch):
    folder, params = workdir
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="compress.student_layers is 4; the fine-tuned model has 4 layers"):
        check.main({**params, "compress": {**params["compress"], "distill": True, "student_layers": 4}})
    assert not Path("metrics/strategy.json").exists()
    check.main({**params, "compress": {**params["compress"], "distill": True, "student_layers": 3}})


def test_a_compressed_model_that_lost_too_much_is_warned_about_with_the_knob_to_turn():
    assert compression.drop_warnings("distilled", 0.01, 0.02) == []
    [warning] = compression.drop_warnings("distilled", 0.03, 0.02)
    assert warning["kind"] == "compression_drop" and "compress.student_layers" in warning["message"]
    [warning] = compression.drop_warnings("pruned", 0.05, 0.02)
    assert "compress.sparsity" in warning["message"]
