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
