"""The baseline every run is measured against: TF-IDF of word and character n-grams + class-balanced logistic
regression (scikit-learn), trained in seconds on the same train split as the transformers.

Saved as plain files that load without pickle: `vocabulary.json` (n-gram -> column, per vectorizer, and the
vectorizer settings), `weights.npz` (idf, coefficients, intercepts; loaded with allow_pickle=False).
"""
import json
from pathlib import Path

import numpy as np

VOCABULARY_FILE = "vocabulary.json"
WEIGHTS_FILE = "weights.npz"


def _vectorizers(cfg):
    from sklearn.feature_extraction.text import TfidfVectorizer

    common = dict(sublinear_tf=True, lowercase=True, max_features=cfg["max_features"], dtype=np.float32)
    return {"word": TfidfVectorizer(analyzer="word", ngram_range=tuple(cfg["word_ngrams"]),
                                    token_pattern=r"(?u)\b\w+\b", **common),
            "char": TfidfVectorizer(analyzer="char_wb", ngram_range=tuple(cfg["char_ngrams"]), **common)}


def _features(vectorizers, texts):
    from scipy.sparse import hstack

    return hstack([vectorizer.transform(texts) for vectorizer in vectorizers.values()]).tocsr()


class Baseline:
    """Fitted vectorizers and classifier; predict_proba(texts) -> (n, classes) probabilities."""

    def __init__(self, vectorizers, classifier, cfg):
        self.vectorizers, self.classifier, self.cfg = vectorizers, classifier, cfg

    def predict_proba(self, texts):
        probabilities = np.zeros((len(texts), self.num_classes), dtype=np.float64)
        probabilities[:, self.classifier.classes_] = self.classifier.predict_proba(
            _features(self.vectorizers, list(texts)))
        return probabilities

    @property
    def num_classes(self):
        return self.cfg["num_classes"]


def fit(texts, labels, num_classes, cfg, seed):
    """Fit on (texts, integer labels); every setting comes from params' `baseline` section."""
    from sklearn.linear_model import LogisticRegression

    from scipy.sparse import hstack

    texts = list(texts)
    vectorizers = _vectorizers(cfg)
    features = hstack([vectorizer.fit_transform(texts) for vectorizer in vectorizers.values()]).tocsr()
    classifier = LogisticRegression(C=cfg["C"], class_weight="balanced", max_iter=2000, random_state=seed)
    classifier.fit(features, np.asarray(labels))
    return Baseline(vectorizers, classifier, {**cfg, "num_classes": int(num_classes)})


def save(model, folder):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocabularies = {name: {term: int(column) for term, column in vectorizer.vocabulary_.items()}
                    for name, vectorizer in model.vectorizers.items()}
    (folder / VOCABULARY_FILE).write_text(json.dumps({"settings": model.cfg, "vocabularies": vocabularies},
                                                     ensure_ascii=False, sort_keys=True), encoding="utf-8")
    np.savez(folder / WEIGHTS_FILE, word_idf=model.vectorizers["word"].idf_, char_idf=model.vectorizers["char"].idf_,
             coef=model.classifier.coef_, intercept=model.classifier.intercept_, classes=model.classifier.classes_)


def load(folder):
    """Rebuild a saved baseline from its plain files (no pickle is read)."""
    from sklearn.linear_model import LogisticRegression

    folder = Path(folder)
    saved = json.loads((folder / VOCABULARY_FILE).read_text(encoding="utf-8"))
    weights = np.load(folder / WEIGHTS_FILE, allow_pickle=False)
    vectorizers = _vectorizers(saved["settings"])
    for name, vectorizer in vectorizers.items():
        vectorizer.set_params(vocabulary=saved["vocabularies"][name])
        vectorizer.idf_ = weights[f"{name}_idf"]
        vectorizer._validate_vocabulary()
    classifier = LogisticRegression()
    classifier.coef_, classifier.intercept_, classifier.classes_ = (weights["coef"], weights["intercept"],
                                                                    weights["classes"])
    return Baseline(vectorizers, classifier, saved["settings"])
