"""fp32 linear layers through oneDNN on a CPU (params compute.cpu_matmul, transfer/training/cpu_matmul.py): the same
outputs and gradients as PyTorch's own linear, really taken by training and prediction, and left alone where it
must be (bf16 autocast, the native setting, a PyTorch without it)."""
import pytest
import torch
import torch.nn.functional as F

from transfer.modeling import load_tokenizer, predict
from transfer.schema import UserError
from transfer.training import compute, cpu_matmul
from tests.test_training_controls import classifier, toy_params, train

pytestmark = pytest.mark.skipif(not cpu_matmul.available(), reason="this PyTorch has no oneDNN linear")

FP32_ONEDNN = {"precision": "fp32", "gradient_checkpointing": False, "cpu_matmul": "onednn",
               "cpu_dropout": "native", "cpu_allocator": "native"}


@pytest.fixture
def onednn_calls(monkeypatch):
    """How many matmuls oneDNN ran."""
    calls = []
    original = cpu_matmul.matmul_transposed

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(cpu_matmul, "matmul_transposed", counting)
    return calls


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_outputs_and_gradients_match_pytorchs_linear(bias, layout, onednn_calls):
    torch.manual_seed(0)
    x = torch.randn(3, 5, 24) if layout == "contiguous" else torch.randn(3, 24, 5).transpose(1, 2)
    weight, b = torch.randn(16, 24), torch.randn(16) if bias else None
    leaves = [t.requires_grad_() for t in (x, weight, b) if t is not None]

    def output_and_gradients(context):
        with context:
            out = F.linear(x, weight, b)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        gradients = [t.grad.clone() for t in leaves]
        for t in leaves:
            t.grad = None
        return out.detach(), gradients

    reference, reference_gradients = output_and_gradients(cpu_matmul.onednn_linear(False))
    assert not onednn_calls
    out, gradients = output_and_gradients(cpu_matmul.onednn_linear())
    assert len(onednn_calls) == 3  # the output, the input's and the weight's gradients
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    for got, expected in zip(gradients, reference_gradients):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_a_frozen_weight_gets_no_gradient_and_costs_no_matmul(onednn_calls):
    x, weight = torch.randn(4, 8, requires_grad=True), torch.randn(6, 8)
    with cpu_matmul.onednn_linear():
        F.linear(x, weight).sum().backward()
    assert weight.grad is None and x.grad is not None
    assert len(onednn_calls) == 2  # the output and the input's gradient only


def test_keyword_arguments_reach_onednn_too(onednn_calls):
    x, weight, bias = torch.randn(4, 8), torch.randn(6, 8), torch.randn(6)
    with cpu_matmul.onednn_linear():
        out = F.linear(x, weight=weight, bias=bias)
        keywords_only = F.linear(input=x, weight=weight)
    assert len(onednn_calls) == 2
    torch.testing.assert_close(out, x @ weight.T + bias)
    torch.testing.assert_close(keywords_only, x @ weight.T)


def test_training_runs_its_linear_layers_in_onednn_and_learns_as_pytorchs_own(tiny_bert, tmp_path, onednn_calls):
    weights, results = {}, {}
    for setting in ("native", "onednn"):
        params = toy_params()
        params["compute"]["cpu_matmul"] = setting
        model = classifier(tiny_bert)
        before = model.classifier.weight.detach().clone()
        calls_before = len(onednn_calls)
        results[setting] = train(tiny_bert, model, params, tmp_path / setting, epochs=2)
        assert (len(onednn_calls) > calls_before) == (setting == "onednn")
        assert not torch.equal(model.classifier.weight, before)
        weights[setting] = {name: p.detach().clone() for name, p in model.named_parameters()}
    # the same 40 steps from the same start: only the matmuls' rounding differs
    for name, value in weights["native"].items():
        torch.testing.assert_close(weights["onednn"][name], value, rtol=1e-3, atol=1e-3, msg=name)
    assert results["onednn"]["val_macro_f1"] == pytest.approx(results["native"]["val_macro_f1"], abs=0.03)
    assert results["onednn"]["val_macro_f1"] > 0.8


def test_prediction_in_the_kernels_context_matches_and_uses_onednn(tiny_bert, onednn_calls):
    model, tokenizer = classifier(tiny_bert), load_tokenizer(str(tiny_bert))
    texts = ["a fine film", "dull and slow, a waste of two hours", "great"]
    reference = predict(model, tokenizer, texts, 32, batch_size=2)
    with compute.cpu_kernels(FP32_ONEDNN):
        probabilities = predict(model, tokenizer, texts, 32, batch_size=2)
    assert onednn_calls
    assert abs(probabilities - reference).max() < 1e-5


def test_bf16_autocast_checkpointing_and_the_native_setting_keep_pytorchs_linear(onednn_calls):
    x, weight = torch.randn(4, 8), torch.randn(6, 8)
    with compute.cpu_kernels({**FP32_ONEDNN, "cpu_matmul": "native"}):
        F.linear(x, weight)
    with compute.cpu_kernels({**FP32_ONEDNN, "precision": "bf16"}):
        F.linear(x, weight)
    with compute.cpu_kernels({**FP32_ONEDNN, "gradient_checkpointing": True}):  # tests/test_compute.py trains so
        F.linear(x, weight)
    with compute.cpu_kernels(FP32_ONEDNN), torch.autocast("cpu", dtype=torch.bfloat16):
        out = F.linear(x, weight)
    assert out.dtype == torch.bfloat16  # the autocast still decides
    assert not onednn_calls


def test_auto_takes_onednn_on_an_avx512_cpu_only_and_onednn_is_refused_where_missing(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert compute.cpu_matmul("auto") == "onednn"
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert compute.cpu_matmul("auto") == "native"  # oneDNN was the slower one on an AVX2-only EPYC
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert compute.cpu_matmul("auto") == "native"
    monkeypatch.setattr(cpu_matmul, "available", lambda: False)
    assert compute.cpu_matmul("native") == "native"
    with pytest.raises(UserError, match=r"compute.cpu_matmul is onednn, but this PyTorch build has no oneDNN"):
        compute.cpu_matmul("onednn")
