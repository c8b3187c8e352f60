"""Classification metrics, as plain dicts that land in metrics/*.json."""
import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support


def classification_report(labels, predictions, label_names):
    """Accuracy, macro-F1, per-class precision / recall / F1 / support and the confusion matrix."""
    ids = list(range(len(label_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=ids, zero_division=0)
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "macro_f1": float(f1_score(labels, predictions, labels=ids, average="macro", zero_division=0)),
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                             "support": int(support[i])} for i, name in enumerate(label_names)},
        "confusion_matrix": confusion_matrix(labels, predictions, labels=ids).tolist(),
    }


def trainer_metrics(eval_prediction):
    """compute_metrics for the HF Trainer; it pairs predictions with the label_ids returned beside them,
    so the order the Trainer evaluated in (length-grouped or not) does not matter."""
    logits = eval_prediction.predictions
    logits = logits[0] if isinstance(logits, tuple) else logits
    predictions = np.argmax(logits, axis=-1)
    labels = eval_prediction.label_ids
    return {"accuracy": float(accuracy_score(labels, predictions)),
            "macro_f1": float(f1_score(labels, predictions, average="macro", zero_division=0))}


def score_curves(labels, probabilities, max_points=200):
    """ROC and precision-recall points and ROC AUC: of the second class for a binary task, micro-averaged
    one-vs-rest otherwise. The points are taken at a fixed grid of thresholds, evenly spaced in log-odds, not at
    every distinct score: on another CPU the scores move in their last digits, which breaks or makes ties and
    would add or drop a point and shift every point after it; against a fixed grid a score changes a point only
    if it crosses a threshold. The grid spans the scores' range, rounded out so that noise does not move it.
    At most `max_points` each, so the plots stay light."""
    from sklearn.metrics import roc_auc_score

    labels, probabilities = np.asarray(labels), np.asarray(probabilities)
    if probabilities.shape[1] == 2:
        truth, scores = labels == 1, probabilities[:, 1]
    else:
        truth = (labels[:, None] == np.arange(probabilities.shape[1])[None, :]).ravel()
        scores = probabilities.ravel()
    if truth.all() or not truth.any():
        return None  # one class only in the split: no curve exists
    # Descending, from "nothing is positive" to "everything is", across the scores' range in log-odds (within ±16,
    # float32's last digits), rounded out to a power of two below its width: a model whose scores sit in a narrow
    # band still gets a fine curve, and float noise moves the ends only where they sit on such a boundary.
    clipped = np.clip(scores.astype(np.float64), 1e-7, 1 - 1e-7)
    log_odds = np.log(clipped) - np.log1p(-clipped)
    unit = 2.0 ** np.floor(np.log2(max(np.ptp(log_odds), 1e-3))) / 4
    low = max(-16.0, np.floor(log_odds.min() / unit) * unit)
    high = min(16.0, np.ceil(log_odds.max() / unit) * unit)
    grid = np.linspace(max(high, low + unit), low, max_points - 2)
    thresholds = np.concatenate([[np.inf], 1 / (1 + np.exp(-grid)), [-np.inf]])
    positive_scores, negative_scores = np.sort(scores[truth]), np.sort(scores[~truth])
    true_positives = len(positive_scores) - np.searchsorted(positive_scores, thresholds, side="left")
    false_positives = len(negative_scores) - np.searchsorted(negative_scores, thresholds, side="left")
    tpr, fpr = true_positives / len(positive_scores), false_positives / len(negative_scores)
    distinct = np.r_[True, (np.diff(true_positives) != 0) | (np.diff(false_positives) != 0)]
    predicted = true_positives + false_positives
    pr = distinct & (predicted > 0)
    precision = true_positives[pr] / predicted[pr]
    return {"roc_auc": float(roc_auc_score(truth, scores)),
            "roc": {"fpr": fpr[distinct].tolist(), "tpr": tpr[distinct].tolist()},
            "precision_recall": {"recall": tpr[pr][::-1].tolist(), "precision": precision[::-1].tolist()}}
