"""A linear-chain CRF over BIO tags (token_classification.crf): the tagger's scores for each word (emissions) plus a
learned score for each tag following each other tag, trained by the log-likelihood of the whole tag sequence and
decoded by Viterbi, so a sentence's tags are chosen together instead of word by word.

Transitions IOB2 forbids (O -> I-X, B-X -> I-Y, I-X -> I-Y, a sentence starting with I-X) are held at a large
negative score, never trained: decoded tags are always valid IOB2, which strict entity scoring needs. pytorch-crf
has no such constraints, and AllenNLP's CRF (which has) comes with a retired framework: hence the forward algorithm
and Viterbi here, a few lines each, checked against brute-force enumeration in tests/test_crf.py."""
from pathlib import Path

import torch
from torch import nn

FORBIDDEN = -1.0e4  # a transition score no path can afford; finite, so the log-sum-exp stays finite
FILE = "crf.safetensors"  # beside the tagger's own weights in a saved folder


def allowed_transitions(names):
    """(allowed[i, j]: tag j may follow tag i; allowed_start[j]: a sentence may start with tag j) under IOB2."""
    def may_follow(before, after):
        return not after.startswith("I-") or (before != "O" and before[2:] == after[2:])

    allowed = torch.tensor([[may_follow(before, after) for after in names] for before in names])
    return allowed, torch.tensor([not name.startswith("I-") for name in names])


class CRF(nn.Module):
    def __init__(self, names):
        super().__init__()
        count = len(names)
        self.transitions = nn.Parameter(torch.zeros(count, count))  # [from, to]
        self.start = nn.Parameter(torch.zeros(count))
        self.end = nn.Parameter(torch.zeros(count))
        allowed, allowed_start = allowed_transitions(names)
        self.register_buffer("allowed", allowed, persistent=False)
        self.register_buffer("allowed_start", allowed_start, persistent=False)

    def scores(self):
        """(transitions, start, end) with the forbidden ones held at FORBIDDEN, in fp32."""
        return (self.transitions.float().masked_fill(~self.allowed, FORBIDDEN),
                self.start.float().masked_fill(~self.allowed_start, FORBIDDEN), self.end.float())

    def nll(self, emissions, tags, mask):
        """-log p(tags | emissions) per sentence. emissions [batch, words, tags]; tags, mask [batch, words], mask
        True on a sentence's words, from the first on. A sentence without words gets 0."""
        emissions, mask = emissions.float(), mask.bool()
        transitions, start, end = self.scores()
        rows = torch.arange(emissions.size(0), device=emissions.device)
        gold = start[tags[:, 0]] + emissions[rows, 0, tags[:, 0]]
        alpha = start + emissions[:, 0]  # log-sum of every path's score, per last tag
        for t in range(1, emissions.size(1)):
            step = mask[:, t]
            gold = gold + step * (transitions[tags[:, t - 1], tags[:, t]] + emissions[rows, t, tags[:, t]])
            following = torch.logsumexp(alpha.unsqueeze(2) + transitions + emissions[:, t].unsqueeze(1), dim=1)
            alpha = torch.where(step.unsqueeze(1), following, alpha)
        last = tags[rows, (mask.sum(1) - 1).clamp(min=0)]
        return (torch.logsumexp(alpha + end, dim=1) - gold - end[last]) * mask[:, 0]

    @torch.no_grad()
    def decode(self, emissions, mask):
        """The best tag ids of each sentence (Viterbi): a list per sentence, as long as its mask."""
        emissions, mask = emissions.float(), mask.bool()
        transitions, start, end = self.scores()
        best, pointers = start + emissions[:, 0], []
        for t in range(1, emissions.size(1)):
            value, came_from = (best.unsqueeze(2) + transitions).max(dim=1)
            pointers.append(came_from)
            best = torch.where(mask[:, t].unsqueeze(1), value + emissions[:, t], best)
        # the path is read back on the CPU: one copy, not a wait on the GPU for every word
        best, pointers = (best + end).cpu(), (torch.stack(pointers).cpu() if pointers else None)
        paths = []
        for row, length in enumerate(mask.sum(1).tolist()):
            path = [int(best[row].argmax())] if length else []
            for t in range(length - 1, 0, -1):
                path.append(int(pointers[t - 1][row, path[-1]]))
            paths.append(path[::-1])
        return paths


def word_level(logits, word_mask, labels=None):
    """The rows of logits [batch, tokens, tags] where word_mask is True (each word's first sub-word token), moved to
    the front: (emissions [batch, words, tags], mask [batch, words], the labels there or None)."""
    counts = word_mask.sum(1)
    width = max(int(counts.max()), 1) if counts.numel() else 1
    order = torch.argsort((~word_mask).to(torch.int8), dim=1, stable=True)[:, :width]
    emissions = logits.gather(1, order.unsqueeze(-1).expand(-1, -1, logits.size(-1)))
    mask = torch.arange(width, device=logits.device) < counts.unsqueeze(1)
    tags = None if labels is None else labels.gather(1, order).masked_fill(~mask, 0)
    return emissions, mask, tags


class CRFTagger(nn.Module):
    """A token-classification model (plain or peft-wrapped) whose scores at each word's first sub-word token feed a
    CRF. forward returns the token scores as `logits`, and with labels (-100 off the words) the CRF's negative
    log-likelihood per word as `loss`; `decode` turns scores into tags. Its tags are those of the tagger's config."""

    def __init__(self, tagger):
        super().__init__()
        from transfer.tasks.token_classification import tag_names

        self.tagger, self.crf = tagger, CRF(tag_names(tagger.config))

    @property
    def config(self):
        return self.tagger.config

    @property
    def device(self):
        return self.crf.transitions.device

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None):
        from transformers.modeling_outputs import TokenClassifierOutput

        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        logits = self.tagger(**{k: v for k, v in inputs.items() if v is not None}).logits
        loss = None
        if labels is not None:
            emissions, mask, tags = word_level(logits, labels != -100, labels)
            loss = self.crf.nll(emissions, tags, mask).sum() / mask.sum().clamp(min=1)
        return TokenClassifierOutput(loss=loss, logits=logits)

    def decode(self, logits, word_mask):
        """Tags from token scores (a tensor or the Trainer's numpy array, wherever they are), decoded on the CRF's
        device."""
        emissions, mask, _ = word_level(torch.as_tensor(logits, device=self.device),
                                        torch.as_tensor(word_mask, device=self.device))
        return self.crf.decode(emissions, mask)

    def gradient_checkpointing_enable(self, **kwargs):  # compute.gradient_checkpointing: the Trainer calls it
        self.tagger.gradient_checkpointing_enable(**kwargs)

    def save_pretrained(self, folder, **kwargs):
        from safetensors.torch import save_file

        self.tagger.save_pretrained(folder, **kwargs)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.crf.state_dict().items()}, Path(folder) / FILE)


def saved_in(folder):
    return (Path(folder) / FILE).is_file()


def load(tagger, folder):
    """`tagger` (loaded from `folder`, or its base plus the adapter there) with the CRF saved in `folder`."""
    from safetensors.torch import load_file

    model = CRFTagger(tagger)
    model.crf.load_state_dict(load_file(Path(folder) / FILE))
    return model
