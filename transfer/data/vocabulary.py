"""Domain vocabulary: the characters of the user's texts that the tokenizer can only call unknown become tokens of
their own, with a new embedding row each, so that the model can tell them apart and pretraining can teach them.

A WordPiece tokenizer turns a character it lacks into its unknown token (and with it the whole word around it);
on Chinese text under an English vocabulary that was 63% of the tokens, and the classifier saw nothing. Byte-level
tokenizers (RoBERTa, GPT-2) have no unknown token: nothing is ever added for them.
"""
from collections import Counter


def uncovered_characters(texts, tokenizer, max_new, min_count):
    """The characters of `texts` that make `tokenizer` emit its unknown token, most frequent first: at most
    `max_new` of them, each seen at least `min_count` times in the stretches of text that came out unknown.

    A character counts where it is unknown on its own too: a word that WordPiece cannot split comes out as one
    unknown token, and only its unknown characters are added, not the known letters around them."""
    unknown = tokenizer.unk_token_id
    if unknown is None:
        return []
    texts = [str(text) for text in texts]
    if tokenizer.is_fast:
        encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, truncation=False,
                            verbose=False)
        counts = Counter(char for text, ids, offsets in zip(texts, encoded["input_ids"], encoded["offset_mapping"])
                         for token, (start, end) in zip(ids, offsets) if token == unknown
                         for char in text[start:end] if not char.isspace())
    else:  # a slow tokenizer gives no offsets: the characters of each space-separated piece that comes out unknown
        pieces = Counter(piece for text in texts for piece in text.split())
        counts = Counter()
        for piece, seen in pieces.items():
            if unknown in tokenizer(piece, add_special_tokens=False)["input_ids"]:
                counts.update({char: seen * piece.count(char) for char in set(piece)})
    found = []
    for char, count in counts.most_common():
        if count < min_count or len(found) == max_new:
            break
        if unknown in tokenizer(char, add_special_tokens=False)["input_ids"]:
            found.append(char)
    return found


def should_extend(setting, coverage, max_unknown_rate):
    """pretrain.extend_vocab: true, false, or auto (when more of the tokens are unknown than data.max_unknown_rate,
    the share at which prepare warns)."""
    return setting is True or setting == "auto" and coverage["unknown_token_rate"] > max_unknown_rate


def add_tokens(tokenizer, model, characters):
    """Add `characters` to the tokenizer and an embedding row for each to the model (the tied output layer and its
    bias follow). A new row is drawn around the old rows' mean with their per-dimension spread, so that each new
    token starts as an ordinary token of its own that the classifier can tell apart even where the embeddings stay
    frozen (transformers' mean resizing draws all of them within 1e-9 of the mean); a character whose old pieces
    were known starts at their mean instead. Returns the number of rows the model has now."""
    import torch

    pieces = {char: tokenizer(char, add_special_tokens=False)["input_ids"] for char in characters}
    old = model.get_input_embeddings().weight.detach().clone()
    tokenizer.add_tokens(list(characters))
    rows = max(len(tokenizer), len(old))
    model.resize_token_embeddings(rows, mean_resizing=False)
    embeddings = model.get_input_embeddings().weight
    mean, spread = old.mean(dim=0), old.std(dim=0)
    with torch.no_grad():
        for char, ids in pieces.items():
            known = [i for i in ids if i != tokenizer.unk_token_id]
            drawn = mean + spread * torch.randn(len(mean))
            embeddings[tokenizer.convert_tokens_to_ids(char)] = old[known].mean(dim=0) if known else drawn
    return rows


def extend(tokenizer, model, texts, cfg, max_unknown_rate):
    """params pretrain.extend_vocab on `texts` (the pool and the train split: never validation or test): add the
    uncovered characters where the setting asks for it. Returns what metrics/pretrain.json reports: the setting,
    how many tokens were added, and the unknown-token rate and tokens per word before and after."""
    from transfer.data import coverage

    before = coverage.measure(texts, tokenizer)
    added = []
    if should_extend(cfg["extend_vocab"], before, max_unknown_rate):
        added = uncovered_characters(texts, tokenizer, cfg["new_tokens_max"], cfg["new_tokens_min_count"])
    if added:
        add_tokens(tokenizer, model, added)
    after = coverage.measure(texts, tokenizer) if added else before
    return {"extend_vocab": cfg["extend_vocab"], "added_tokens": len(added), "vocabulary_size": len(tokenizer),
            "unknown_token_rate_before": before["unknown_token_rate"],
            "unknown_token_rate_after": after["unknown_token_rate"],
            "tokens_per_word_before": before["tokens_per_word"], "tokens_per_word_after": after["tokens_per_word"]}
