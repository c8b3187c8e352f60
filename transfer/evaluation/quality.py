"""Quality guards: is a trained model any good, and if not, a loud, specific reason why and what to change.

A guard looks at one model's classification report (metrics.classification_report) and returns warnings as
plain dicts (kind, model, figures, message) that land in the metrics files, the model card and the stage's output.
"""
import numpy as np

RULE = "=" * 78


def _lr_key(model, strategy):
    return "finetune.learning_rate" if model == "finetune" else f"{strategy}.learning_rate"


def _epochs_key(model):
    return "finetune.epochs" if model == "finetune" else "peft.epochs"


def guard(model, report, names, split, strategy, baseline=None):
    """Warnings for `model` ('finetune' or 'peft') from its report on `split`: one class predicted for every text,
    a class with rows in the split never predicted, macro-F1 below the TF-IDF baseline's (when given)."""
    matrix = np.asarray(report["confusion_matrix"])
    support, predicted = matrix.sum(axis=1), matrix.sum(axis=0)
    shown = strategy if model == "peft" else "finetune"
    found = []
    if np.count_nonzero(predicted) == 1:
        only = names[int(np.flatnonzero(predicted)[0])]
        found.append({"kind": "single_class", "model": model, "split": split, "predicted_class": only,
                      "macro_f1": round(report["macro_f1"], 4),
                      "message": f"{shown} predicts {only!r} for every one of the {int(matrix.sum())} {split} texts: "
                                 "it learned nothing from the text. Likely causes: too few training steps, a learning "
                                 "rate that is too low or too high, uneven classes, or a tokenizer that does not cover "
                                 f"the language (see metrics/data.json). Change {_lr_key(model, strategy)} or "
                                 f"{_epochs_key(model)}, keep train.class_weights: auto, or choose another model.name."})
    else:
        never = [names[i] for i in range(len(names)) if support[i] > 0 and predicted[i] == 0]
        if never:
            found.append({"kind": "class_never_predicted", "model": model, "split": split, "classes": never,
                          "support": {names[i]: int(support[i]) for i in range(len(names)) if names[i] in never},
                          "message": f"{shown} never predicts {', '.join(map(repr, never))}, though the {split} "
                                     "split has rows of them: too few training rows or steps for those classes. "
                                     "Keep train.class_weights: auto, raise data.min_train_per_class or "
                                     f"data.max_train, or raise {_epochs_key(model)}."})
    if baseline is not None and report["macro_f1"] < baseline["macro_f1"]:
        gap = baseline["macro_f1"] - report["macro_f1"]
        found.append({"kind": "below_baseline", "model": model, "split": split,
                      "macro_f1": round(report["macro_f1"], 4), "baseline_macro_f1": round(baseline["macro_f1"], 4),
                      "gap": round(gap, 4),
                      "message": f"{shown} scores macro-F1 {report['macro_f1']:.4f} on the {split} split, "
                                 f"{gap:.4f} below the TF-IDF + logistic-regression baseline "
                                 f"({baseline['macro_f1']:.4f}): here the transformer adds nothing a bag of words "
                                 f"lacks. Try more labelled data (data.max_train), more epochs ({_epochs_key(model)}), "
                                 f"longer inputs (train.max_length), another {_lr_key(model, strategy)}, or a "
                                 "model.name that fits your language and domain; or ship the baseline."})
    return found


def announce(warnings, stage):
    """Print a loud block at the end of a stage's output, when there are warnings."""
    if not warnings:
        return
    lines = [RULE, f"WARNING ({stage}): {len(warnings)} quality problem(s); details in the metrics files", RULE]
    lines += [f"- {warning['message']}" for warning in warnings]
    print("\n".join(lines + [RULE]), flush=True)


def worst_classes(report, count=3):
    scores = sorted(report["per_class"].items(), key=lambda item: (item[1]["f1"], item[0]))
    return [(name, s["f1"]) for name, s in scores if s["support"] > 0][:count]


def report(evaluate_metrics):
    """One screen: each model's test macro-F1 and accuracy against the baseline, its worst classes, the warnings."""
    rows = [("model", "macro-F1", "accuracy", "vs baseline", "worst classes (F1)")]
    baseline_f1 = evaluate_metrics["baseline"]["macro_f1"]
    labels = {"finetune": "finetune", "peft": evaluate_metrics["strategy"], "baseline": "baseline (TF-IDF)"}
    for key, label in labels.items():
        figures = evaluate_metrics[key]
        worst = ", ".join(f"{name} {f1:.2f}" for name, f1 in worst_classes(figures))
        versus = "" if key == "baseline" else f"{figures['macro_f1'] - baseline_f1:+.4f}"
        rows.append((label, f"{figures['macro_f1']:.4f}", f"{figures['accuracy']:.4f}", versus, worst))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [f"Quality report: test split, {evaluate_metrics['test_rows']} texts"]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths)) + "  " + row[4] for row in rows]
    warnings = evaluate_metrics.get("warnings", [])
    kinds = ", ".join(f"{w['kind']} ({labels.get(w['model'], w['model'])})" for w in warnings)
    lines.append(f"quality warnings: {len(warnings)}" + (f": {kinds}" if warnings else " (none)"))
    return "\n".join(lines)
