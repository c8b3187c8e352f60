"""Dropout with the cheaper CPU mask (transfer/training/cpu_dropout.py): the rate, the scaling, the gradient, the
attention path, and where PyTorch's own dropout stays."""
import pytest
import torch
import torch.nn.functional as F

from transfer.training import compute, cpu_dropout
from transfer.training.cpu_dropout import fast_dropout, keep_mask


def counting(monkeypatch):
    calls = []
    real = cpu_dropout.keep_mask
    monkeypatch.setattr(cpu_dropout, "keep_mask", lambda *args: calls.append(args) or real(*args))
    return calls


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_the_mask_keeps_one_minus_p_and_repeats_under_a_seed(p):
    torch.manual_seed(0)
    first = keep_mask((1000, 999), p)  # not a multiple of four elements
    assert first.shape == (1000, 999) and first.dtype == torch.bool
    assert abs(first.float().mean().item() - (1 - p)) < 0.002
    assert not torch.equal(first, keep_mask((1000, 999), p))  # a new mask each call
    torch.manual_seed(0)
    assert torch.equal(first, keep_mask((1000, 999), p))  # the seed decides it: runs repeat


def test_dropout_zeroes_the_dropped_scales_the_kept_and_masks_the_gradient(monkeypatch):
    calls = counting(monkeypatch)
    x = torch.randn(64, 128, requires_grad=True)
    with fast_dropout():
        y = torch.nn.Dropout(0.2).train()(x)
    y.backward(torch.ones_like(y))
    assert len(calls) == 1
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.8) < 0.03
    torch.testing.assert_close(y[kept], x[kept] / 0.8)
    torch.testing.assert_close(x.grad, kept.float() / 0.8)  # the gradient flows through the kept elements alone


def test_attention_dropout_runs_the_math_path_with_the_mask(monkeypatch):
    query, key, value = (torch.randn(2, 3, 7, 8, requires_grad=True) for _ in range(3))
    mask = torch.zeros(2, 1, 7, 7)
    mask[0, ..., -3:] = torch.finfo(torch.float32).min  # padding, as BERT's additive mask has
    torch.manual_seed(1)
    with fast_dropout():
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.3)
    torch.manual_seed(1)  # the same draw again, by hand
    keep = keep_mask((2, 3, 7, 7), 0.3)
    probs = torch.softmax(query @ key.transpose(-2, -1) / 8 ** 0.5 + mask, dim=-1)
    torch.testing.assert_close(out, (probs * keep / 0.7) @ value)
    out.sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (query, key, value))
    boolean = mask == 0  # SDPA's boolean mask: True takes part
    with fast_dropout():
        torch.manual_seed(1)
        out_bool = F.scaled_dot_product_attention(query, key, value, attn_mask=boolean, dropout_p=0.3)
    torch.testing.assert_close(out_bool, out)


def test_pytorch_keeps_evaluation_zero_p_autocast_and_causal_attention(monkeypatch):
    calls = counting(monkeypatch)
    x = torch.randn(4, 3, 5, 8)
    with fast_dropout():
        assert torch.equal(F.dropout(x, 0.1, training=False), x)
        assert torch.equal(torch.nn.Dropout(0.0).train()(x), x)
        reference = F.scaled_dot_product_attention(x, x, x)
        torch.testing.assert_close(F.scaled_dot_product_attention(x, x, x, dropout_p=0.0), reference)
        F.scaled_dot_product_attention(x, x, x, dropout_p=0.1, is_causal=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            F.dropout(x, 0.1, training=True)
        F.dropout(x.to(torch.float64), 0.1, training=True)
    assert calls == []
    with fast_dropout(enabled=False):
        F.dropout(x, 0.1, training=True)
    assert calls == []


def test_a_bert_trains_under_the_mask(tiny_bert, monkeypatch):
    """Every dropout of a BERT's training forward (embeddings, attention probabilities, hidden states, the head)
    takes the mask, and its loss falls as with PyTorch's dropout."""
    from transfer import modeling

    calls = counting(monkeypatch)
    torch.manual_seed(0)
    model = modeling.load_classifier(str(tiny_bert), ["a", "b"], attention_dropout=0.1).train()
    layers = model.config.num_hidden_layers
    ids = torch.randint(5, model.config.vocab_size, (8, 12))
    labels = torch.tensor([0, 1] * 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    with fast_dropout():
        for _ in range(15):
            loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
    per_step = 1 + 3 * layers + 1  # embeddings; attention probabilities, attention output, FFN output; the head
    assert len(calls) == 15 * per_step
    assert losses[-1] < 0.5 * losses[0]


def test_auto_resolves_per_device(monkeypatch):
    assert compute.cpu_dropout("fast") == "fast" and compute.cpu_dropout("native") == "native"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert compute.cpu_dropout("auto") == "fast"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert compute.cpu_dropout("auto") == "native"
