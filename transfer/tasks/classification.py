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
    one-vs-rest otherwise, thinned to at most `max_points` each so the plots stay light."""
    from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve

    labels, probabilities = np.asarray(labels), np.asarray(probabilities)
    if probabilities.shape[1] == 2:
        truth, scores = labels == 1, probabilities[:, 1]
    else:
        truth = (labels[:, None] == np.arange(probabilities.shape[1])[None, :]).ravel()
        scores = probabilities.ravel()
    if truth.all() or not truth.any():
        return None  # one class only in the split: no curve exists
    fpr, tpr, _ = roc_curve(truth, scores)
    precision, recall, _ = precision_recall_curve(truth, scores)

    def thin(*columns):
        keep = np.unique(np.linspace(0, len(columns[0]) - 1, min(max_points, len(columns[0]))).round().astype(int))
        return [column[keep].tolist() for column in columns]  # outputs.write_csv rounds them

    fpr, tpr = thin(fpr, tpr)
    recall, precision = thin(recall, precision)
    return {"roc_auc": float(roc_auc_score(truth, scores)), "roc": {"fpr": fpr, "tpr": tpr},
            "precision_recall": {"recall": recall, "precision": precision}}
