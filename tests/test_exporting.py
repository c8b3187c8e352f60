"""The ONNX export's graph fusions and int8 kernels (transfer/export/onnx_model.py), on the tiny BERT."""
import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from transfer import modeling
from transfer.export import onnx_model
from tests.conftest import metrics, toy_texts

NAMES = ["negative", "positive"]


@pytest.fixture(scope="module")
def exported(tiny_bert, tmp_path_factory):
    """The tiny BERT as a classifier, saved and exported to ONNX fp32 by optimum, with a tokenized sample batch."""
    folder = tmp_path_factory.mktemp("exported")
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the new classifier head: the same whichever tests ran before
        model = modeling.load_classifier(str(tiny_bert), NAMES)
    model.save_pretrained(folder / "saved")
    tokenizer = modeling.load_tokenizer(str(tiny_bert))
    tokenizer.save_pretrained(folder / "saved")
    onnx_model.export_onnx(folder / "saved", folder / "onnx")
    sample = tokenizer(toy_texts(6)["review"].tolist(), padding=True, return_tensors="np")
    sample["attention_mask"][0, -2:] = 0  # padding inside the batch: the fused attention must honour the mask
    return folder / "onnx", sample


def op_types(path):
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def test_fused_graph_gives_the_same_logits_with_fused_ops(exported, tmp_path):
    source, sample = exported
    onnx_dir = shutil.copytree(source, tmp_path / "onnx")
    before = onnx_model.onnx_logits(onnx_model.onnx_session(onnx_dir / onnx_model.FP32_FILE), sample)
    assert onnx_model.fuse_graph(onnx_dir, "bert", sample)
    fused = op_types(onnx_dir / onnx_model.FP32_FILE)
    assert {"Attention", "SkipLayerNormalization"} <= fused, fused
    after = onnx_model.onnx_logits(onnx_model.onnx_session(onnx_dir / onnx_model.FP32_FILE), sample)
    np.testing.assert_allclose(after, before, atol=1e-4)


def test_a_fusion_that_changes_the_logits_is_rolled_back(exported, tmp_path, monkeypatch):
    from onnxruntime.transformers import optimizer

    source, sample = exported
    onnx_dir = shutil.copytree(source, tmp_path / "onnx")
    original = (onnx_dir / onnx_model.FP32_FILE).read_bytes()
    real = optimizer.optimize_model

    def wrong(path, **kwargs):  # a fusion with a bug: the classifier's bias comes out changed
        fused = real(path, **kwargs)
        bias = next(t for t in fused.model.graph.initializer if "classifier" in t.name and "bias" in t.name)
        bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 1.0, bias.name))
        return fused

    monkeypatch.setattr(optimizer, "optimize_model", wrong)
    assert not onnx_model.fuse_graph(onnx_dir, "bert", sample)
    assert (onnx_dir / onnx_model.FP32_FILE).read_bytes() == original


def test_a_model_type_ort_cannot_fuse_is_left_as_it_is(exported, tmp_path):
    source, sample = exported
    onnx_dir = shutil.copytree(source, tmp_path / "onnx")
    original = (onnx_dir / onnx_model.FP32_FILE).read_bytes()
    assert not onnx_model.fuse_graph(onnx_dir, "convbert", sample)
    assert (onnx_dir / onnx_model.FP32_FILE).read_bytes() == original


@pytest.mark.parametrize("kind, largest_weight", [("avx2", 64), ("avx512_vnni", 128), ("arm64", 128)])
@pytest.mark.parametrize("per_channel", [True, False])
def test_int8_weights_fit_the_kernels_and_keep_the_predictions(exported, tmp_path, kind, largest_weight, per_channel):
    """Every kind multiplies u8 by s8; for AVX2 without VNNI, whose multiply-add sums two such products in 16 bits,
    the weights keep to 7 bits so that no sum can overflow; per-channel weights carry one scale per output channel.
    Clear labels stay fp32's, and so do the logits, closely, where this CPU runs the kernels the weights were made
    for, and for avx2's 7-bit weights on any x86 CPU."""
    source, sample = exported
    onnx_dir = shutil.copytree(source, tmp_path / "onnx")
    path, chosen = onnx_model.quantize_int8(onnx_dir, kind, per_channel)
    assert chosen == kind and path == onnx_dir / onnx_model.INT8_FILE
    graph = onnx.load(str(path)).graph
    matmul_inputs = {name for node in graph.node if node.op_type in ("MatMulInteger", "DynamicQuantizeMatMul")
                     for name in node.input}
    weights = [t for t in graph.initializer if t.name in matmul_inputs and t.name.endswith("_quantized")]
    assert weights and {t.data_type for t in weights} == {onnx.TensorProto.INT8}  # the embeddings' Gather keeps uint8
    values = np.concatenate([numpy_helper.to_array(t).ravel().astype(int) for t in weights])
    assert np.abs(values).max() <= largest_weight  # 255 * 64 * 2 = 32,640 fits a 16-bit sum, 255 * 127 * 2 not
    assert np.abs(values).max() > largest_weight // 2  # the range is used, not squeezed further
    scales = [numpy_helper.to_array(t) for t in graph.initializer if t.name.endswith("_scale") and
              t.name.replace("_scale", "_quantized") in {w.name for w in weights}]
    assert scales and any(s.size > 1 for s in scales) == per_channel  # embeddings (Gather) keep one scale
    fp32 = onnx_model.onnx_logits(onnx_model.onnx_session(onnx_dir / onnx_model.FP32_FILE), sample)
    int8 = onnx_model.onnx_logits(onnx_model.onnx_session(path), sample)
    tolerance = 0.05  # the random head's logits are about 0.4 apart; int8 moved them by at most 0.02 in trials
    if kind in ("avx2", onnx_model.int8_kind("auto")):  # kernels this CPU runs as they were meant
        assert np.abs(int8 - fp32).max() < tolerance
    # else: 8-bit signed weights on a CPU without VNNI go through AVX2's u8 x s8 multiply-add, whose 16-bit sums
    # saturate (0.065 off on an AVX2-only EPYC): the reason export.int8: auto picks avx2 there
    clear = np.abs(fp32[:, 0] - fp32[:, 1]) > 2 * tolerance  # a near tie may flip, as it would in fp16
    assert clear.any() and (fp32.argmax(1) == int8.argmax(1))[clear].all()


def test_auto_picks_this_cpus_kernels(monkeypatch):
    monkeypatch.setattr(onnx_model.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(onnx_model, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_vnni"})
    assert onnx_model.int8_kind("auto") == "avx512_vnni"
    monkeypatch.setattr(onnx_model, "cpu_flags", lambda: {"avx2"})
    assert onnx_model.int8_kind("auto") == "avx2"
    assert onnx_model.int8_kind("avx512_vnni") == "avx512_vnni"  # as params say, whatever this CPU has
    monkeypatch.setattr(onnx_model.platform, "machine", lambda: "aarch64")
    assert onnx_model.int8_kind("auto") == "arm64"


def test_the_export_stage_records_its_onnx_settings(workdir):
    folder, params = workdir
    onnx_settings = metrics(folder, "export")["onnx"]
    assert onnx_settings == {"fused_graph": params["export"]["fuse_graph"], "int8_kernels": onnx_model.int8_kind("auto"),
                             "int8_per_channel": params["export"]["int8_per_channel"],
                             "int8_smoothing": params["export"]["int8_smoothing"],
                             "int8_embedding_bits": params["export"]["int8_embedding_bits"]}
    assert ("Attention" in op_types(folder / "models/exported" / onnx_model.FP32_FILE)) == params["export"]["fuse_graph"]


def test_a_4_bit_vocabulary_table_shrinks_the_int8_model_and_keeps_its_predictions(exported, tmp_path):
    """export.int8_embedding_bits 4: the input_ids' lookup becomes a GatherBlockQuantized of 4-bit blocks, half a byte
    a value where the int8 quantizer's table takes one (the position and token-type tables stay its); the logits
    stay close to the 8-bit table's, and model.onnx stays as exported."""
    source, sample = exported
    eight, four = (shutil.copytree(source, tmp_path / name) for name in ("eight", "four"))
    path8, _ = onnx_model.quantize_int8(eight, "auto", True)
    path4, _ = onnx_model.quantize_int8(four, "auto", True, embedding_bits=4)
    table = next(t for t in onnx.load(str(source / onnx_model.FP32_FILE)).graph.initializer
                 if t.name.endswith("word_embeddings.weight"))
    graph = onnx.load(str(path4)).graph
    lookups = [node for node in graph.node if node.op_type == "GatherBlockQuantized"]
    assert len(lookups) == 1 and lookups[0].input[1] == "input_ids"
    packed = next(t for t in graph.initializer if t.name == lookups[0].input[0])
    assert packed.data_type == onnx.TensorProto.UINT4 and list(packed.dims) == list(table.dims)
    assert len(packed.raw_data) == table.dims[0] * table.dims[1] // 2
    assert not any(node.op_type == "Gather" and node.input[1] == "input_ids" for node in graph.node)
    assert sum(node.op_type == "Gather" for node in graph.node) == sum(  # the other lookups as the 8-bit model has them
        node.op_type == "Gather" for node in onnx.load(str(path8)).graph.node) - 1
    logits = [onnx_model.onnx_logits(onnx_model.onnx_session(p), sample) for p in (path8, path4)]
    assert np.abs(logits[0] - logits[1]).max() < 0.05
    assert (four / onnx_model.FP32_FILE).read_bytes() == (source / onnx_model.FP32_FILE).read_bytes()


def test_smoothed_int8_of_the_bert_keeps_its_predictions(exported, tmp_path):
    """Outlier smoothing (export.int8_smoothing) on a real BERT graph: the smoothing Muls land in the int8 model,
    which still runs and gives fp32's clear labels; model.onnx stays as exported."""
    source, sample = exported
    onnx_dir = shutil.copytree(source, tmp_path / "onnx")
    original = (onnx_dir / onnx_model.FP32_FILE).read_bytes()
    path, _ = onnx_model.quantize_int8(onnx_dir, "auto", True, [sample], 0.5)
    assert any(node.op_type == "Mul" and node.name.endswith("_smooth") for node in onnx.load(str(path)).graph.node)
    assert (onnx_dir / onnx_model.FP32_FILE).read_bytes() == original
    fp32 = onnx_model.onnx_logits(onnx_model.onnx_session(onnx_dir / onnx_model.FP32_FILE), sample)
    int8 = onnx_model.onnx_logits(onnx_model.onnx_session(path), sample)
    assert np.abs(int8 - fp32).max() < 0.05
    clear = np.abs(fp32[:, 0] - fp32[:, 1]) > 0.1
    assert clear.any() and (fp32.argmax(1) == int8.argmax(1))[clear].all()


def test_where_int8_is_no_faster_than_onnx_fp32_the_card_says_to_serve_fp32():
    from transfer.export.card import int8_speed_note

    def timing(onnx_fp32, onnx_int8):
        return {"latency_ms": {"batch32": {"pytorch_fp32": 1513.7, "onnx_fp32": onnx_fp32, "onnx_int8": onnx_int8}}}
    note = int8_speed_note(timing(1545.6, 1527.9))  # an AVX2 EPYC of family 23 model 1
    assert "int8 ran 1.01x ONNX fp32 at batch 32" in note and "--precision fp32" in note
    assert int8_speed_note(timing(1500.0, 1600.0)).startswith("On this machine int8 ran 0.94x")
    assert int8_speed_note(timing(636.3, 457.6)) is None  # a later AVX2 EPYC: 1.39x
