"""The CRF head of token_classification.crf: its likelihood and its decoding against brute-force enumeration of every
tag path, IOB2 held on what it decodes, and training that moves the transitions."""
import itertools
import math

import pytest
import torch

from transfer import crf

NAMES = ["O", "B-X", "I-X", "B-Y", "I-Y"]


def valid(tags):
    return all(not b.startswith("I-") or (a != "O" and a[2:] == b[2:]) for a, b in zip(["O"] + tags, tags))


def path_score(model, emissions, path):
    transitions, start, end = model.scores()
    score = start[path[0]] + end[path[-1]] + sum(emissions[t, tag] for t, tag in enumerate(path))
    return score + sum(transitions[a, b] for a, b in zip(path, path[1:]))


def random_crf(seed=0):
    torch.manual_seed(seed)
    model = crf.CRF(NAMES)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_()
    return model


def test_the_likelihood_and_the_decoded_path_match_every_path_enumerated():
    model = random_crf()
    emissions = torch.randn(3, 4, len(NAMES))
    lengths = [4, 2, 1]
    mask = torch.arange(4) < torch.tensor(lengths).unsqueeze(1)
    tags = torch.randint(0, len(NAMES), (3, 4))
    tags[0] = torch.tensor([1, 2, 0, 3])  # a valid path; row 1's random one may be invalid: then very unlikely
    nll = model.nll(emissions, tags.masked_fill(~mask, 0), mask)
    decoded = model.decode(emissions, mask)
    for row, length in enumerate(lengths):
        paths = [p for p in itertools.product(range(len(NAMES)), repeat=length)]
        scores = torch.stack([path_score(model, emissions[row], p) for p in paths])
        log_z = torch.logsumexp(scores, 0)
        gold = path_score(model, emissions[row], tags[row, :length].tolist())
        assert nll[row].item() == pytest.approx((log_z - gold).item(), rel=1e-5, abs=1e-4)
        assert tuple(decoded[row]) == paths[int(scores.argmax())]
        assert valid([NAMES[t] for t in decoded[row]])
    assert math.exp(-nll[0].item()) > 1e-6 and nll[0].item() > 0


def test_decoded_tags_are_iob2_even_where_every_word_scores_i_highest():
    model = crf.CRF(NAMES)
    emissions = torch.full((1, 5, len(NAMES)), -5.0)
    emissions[0, :, NAMES.index("I-Y")] = 5.0  # alone, word by word: I-Y I-Y I-Y I-Y I-Y (not an entity)
    (path,) = model.decode(emissions, torch.ones(1, 5, dtype=torch.bool))
    assert [NAMES[t] for t in path] == ["B-Y", "I-Y", "I-Y", "I-Y", "I-Y"]
    assert model.decode(emissions, torch.zeros(1, 5, dtype=torch.bool)) == [[]]


def test_word_level_moves_each_words_first_token_to_the_front():
    logits = torch.arange(2 * 5 * 2, dtype=torch.float).reshape(2, 5, 2)
    labels = torch.tensor([[-100, 1, -100, 0, -100], [-100, -100, 1, -100, -100]])
    emissions, mask, tags = crf.word_level(logits, labels != -100, labels)
    assert emissions[0].tolist() == [logits[0, 1].tolist(), logits[0, 3].tolist()]
    assert emissions[1, 0].tolist() == logits[1, 2].tolist()
    assert mask.tolist() == [[True, True], [True, False]] and tags.tolist() == [[1, 0], [1, 0]]


def test_training_moves_the_transitions_toward_the_tag_order_of_the_data():
    """Emissions that cannot tell B-X from I-X (equal scores): only the transitions can learn that X starts with
    B-X and continues with I-X, and decoding then gets it right."""
    torch.manual_seed(0)
    model = crf.CRF(NAMES)
    tags = torch.tensor([[0, 1, 2, 2, 0]] * 8)
    emissions = torch.zeros(8, 5, len(NAMES))
    emissions[:, :, 0] = torch.where(tags == 0, 2.0, -2.0)
    mask = torch.ones(8, 5, dtype=torch.bool)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    losses = []
    for _ in range(60):
        loss = model.nll(emissions, tags, mask).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
    assert model.decode(emissions[:1], mask[:1]) == [[0, 1, 2, 2, 0]]
    assert model.transitions[1, 2] > model.transitions[1, 3], "B-X -> I-X learned over B-X -> B-Y"


def test_the_tagger_hands_the_crf_its_scores_on_the_crfs_own_device(monkeypatch):
    """On a GPU the CRF sits on the GPU while the Trainer's compute_metrics gets numpy arrays and predict_tags CPU
    tensors: the tagger puts them on the CRF's device. Here the tagger is on 'meta', a device no CPU tensor is on."""
    import numpy as np
    from transformers import BertConfig, BertForTokenClassification

    config = BertConfig(vocab_size=32, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
                        id2label=dict(enumerate(NAMES)), label2id={name: i for i, name in enumerate(NAMES)})
    tagger = crf.CRFTagger(BertForTokenClassification(config))
    logits = np.random.default_rng(0).normal(size=(2, 6, len(NAMES))).astype(np.float32)
    word_mask = np.array([[0, 1, 1, 0, 1, 0], [0, 1, 0, 1, 0, 0]], dtype=bool)
    on_the_cpu = tagger.decode(logits, word_mask)
    assert [len(path) for path in on_the_cpu] == [3, 2]
    seen = []
    monkeypatch.setattr(crf, "word_level", lambda scores, mask: seen.append((scores.device, mask.device)) or (
        scores, mask, None))
    monkeypatch.setattr(crf.CRF, "decode", lambda self, emissions, mask: [])
    tagger.to("meta").decode(logits, word_mask)
    tagger.decode(torch.as_tensor(logits), torch.as_tensor(word_mask))
    assert seen == [(torch.device("meta"), torch.device("meta"))] * 2
