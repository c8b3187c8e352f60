"""How well the model's tokenizer covers the user's texts, and which script and language they are written in.

A tokenizer can cover a text badly in two ways: it maps characters it lacks to its unknown token (a Chinese
review under an English vocabulary), or it knows every character but splits words into many pieces (Indonesian
under an English word-piece vocabulary: no unknown tokens, 2.6 pieces per word). Both are measured.
"""
import re
import unicodedata
from collections import Counter

# scripts written without spaces between words: there a character stands in for a word
NO_SPACE_SCRIPTS = {"CJK", "HIRAGANA", "KATAKANA", "THAI", "LAO", "KHMER", "MYANMAR", "TIBETAN"}
SCRIPT_LANGUAGE = {"CJK": "zh", "HANGUL": "ko", "THAI": "th", "ARABIC": "ar", "HEBREW": "he", "GREEK": "el",
                   "DEVANAGARI": "hi", "BENGALI": "bn", "TAMIL": "ta", "GEORGIAN": "ka", "ARMENIAN": "hy"}
# the commonest words of the Latin-script languages told apart here; others stay unknown (None)
STOPWORDS = {
    "en": "the and of to is in it that this was for with not but".split(),
    "de": "der die und das ist nicht ein ich zu sie mit auch es".split(),
    "fr": "le la les et est un une des pas que pour dans il".split(),
    "es": "el la de que y los es una por con para las se".split(),
    "it": "il di che e la non un per una sono mi con del".split(),
    "pt": "de que não o a é um uma para com os se do".split(),
    "nl": "de het een en van is niet dat ik op zijn met voor".split(),
    "id": "yang dan di itu ini tidak ada dengan untuk saya aku ya juga".split(),
}
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


def script_of(character):
    """The Unicode script of a letter, from its name: 'LATIN', 'CJK', 'CYRILLIC', 'HIRAGANA', ..."""
    return unicodedata.name(character, "UNKNOWN").split(" ")[0]


def dominant_script(texts):
    """(script, its share of all letters) over `texts`; ('NONE', 0.0) when they hold no letters."""
    counts = Counter(script_of(c) for text in texts for c in text if c.isalpha())
    if not counts:
        return "NONE", 0.0
    script, count = counts.most_common(1)[0]
    kana = counts["HIRAGANA"] + counts["KATAKANA"]
    if script == "CJK" and kana > 0.1 * sum(counts.values()):
        script, count = "HIRAGANA", count + kana  # kanji with kana: Japanese
    return script, count / sum(counts.values())


def guess_language(texts, script):
    """An ISO 639-1 code from the script, or for Latin script from the commonest words; None when unsure."""
    if script in ("HIRAGANA", "KATAKANA"):
        return "ja"
    if script != "LATIN":
        return SCRIPT_LANGUAGE.get(script)
    words = Counter(word.lower() for text in texts for word in _WORD.findall(text))
    hits = {language: sum(words[w] for w in stopwords) for language, stopwords in STOPWORDS.items()}
    best = max(hits, key=hits.get)
    total = sum(words.values())
    return best if total and hits[best] >= 0.05 * total else None


def word_count(text):
    """Words, counting each character of a script without spaces (Chinese, Japanese, Thai, ...) as one."""
    spaced = "".join(" " if c.isalpha() and script_of(c) in NO_SPACE_SCRIPTS else c for c in text)
    return len(_WORD.findall(spaced)) + sum(1 for a, b in zip(text, spaced) if a != b)


def measure(texts, tokenizer, max_texts=2000):
    """Unknown-token rate, tokens per word, dominant script and language of (the first max_texts of) `texts`."""
    texts = [str(text) for text in texts][:max_texts]
    ids = tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    tokens = sum(len(seq) for seq in ids)
    unknown_id = tokenizer.unk_token_id
    unknown = sum(seq.count(unknown_id) for seq in ids) if unknown_id is not None else 0
    words = sum(word_count(text) for text in texts)
    script, share = dominant_script(texts)
    return {
        "texts_measured": len(texts),
        "unknown_token_rate": round(unknown / max(tokens, 1), 4),
        "tokens_per_word": round(tokens / max(words, 1), 3),
        "script": script,
        "script_share": round(share, 3),
        "language": guess_language(texts, script),
    }


def warnings(coverage, max_unknown_rate, max_tokens_per_word, model_name):
    """The coverage problems worth telling the user, each with the fix."""
    found = []
    fix = (f"set model.name to an encoder whose vocabulary covers this text (for {coverage['language'] or coverage['script']}: "
           "a model trained on that language, or a multilingual one such as xlm-roberta-base or "
           "bert-base-multilingual-cased); the bundled MiniLM knows English")
    if coverage["unknown_token_rate"] > max_unknown_rate:
        found.append({"kind": "tokenizer_unknown_tokens", "model": model_name,
                      "unknown_token_rate": coverage["unknown_token_rate"], "threshold": max_unknown_rate,
                      "message": f"{coverage['unknown_token_rate']:.1%} of the tokens of your texts are the "
                                 f"tokenizer's unknown token (data.max_unknown_rate: {max_unknown_rate}): the model "
                                 f"cannot see what they say. pretrain.extend_vocab (auto, the default, or true) "
                                 f"adds the characters it lacks as tokens in pretrain; or {fix}."})
    if coverage["tokens_per_word"] > max_tokens_per_word:
        found.append({"kind": "tokenizer_splits_words", "model": model_name,
                      "tokens_per_word": coverage["tokens_per_word"], "threshold": max_tokens_per_word,
                      "message": f"the tokenizer splits each word of your texts into {coverage['tokens_per_word']:.2f} "
                                 f"pieces on average (data.max_tokens_per_word: {max_tokens_per_word}; English under "
                                 "an English vocabulary: about 1.2): its vocabulary does not fit this language, and "
                                 f"train.max_length holds fewer words. Fix: {fix}."})
    return found
