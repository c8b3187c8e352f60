"""One leaderboard of every model the run trained, plus a majority-class dummy, ranked by validation macro-F1.

Ranked by validation macro-F1 (never accuracy, never a weighted average, never the test split, which stays for
the figures a user reports); a tie goes to the smaller model. `best` names the model `export.source: best` ships:
the top row other than the dummy.
"""
from pathlib import Path

import numpy as np

from transfer.tasks.classification import classification_report

CANDIDATES = ("finetune", "peft", "baseline")  # what export may ship; 'majority' is only a yardstick


def majority(train_labels, split_labels, names):
    """The report of always answering the most frequent training class."""
    most = int(np.bincount(np.asarray(train_labels), minlength=len(names)).argmax())
    return classification_report(np.asarray(split_labels), np.full(len(split_labels), most), names)


def folder_mb(*paths):
    """Megabytes of the files that make up a model (weights, vocabulary): what shipping it costs on disk."""
    files = [f for path in paths for f in ([Path(path)] if Path(path).is_file() else Path(path).rglob("*"))
             if f.is_file() and f.suffix in (".safetensors", ".json", ".npz", ".txt")]
    return round(sum(f.stat().st_size for f in files) / 2**20, 2)


def row(name, val_macro_f1, test_report, size_mb):
    recalls = {cls: s["recall"] for cls, s in test_report["per_class"].items() if s["support"] > 0}
    worst = min(recalls, key=lambda cls: (recalls[cls], cls))
    return {"model": name, "val_macro_f1": round(val_macro_f1, 4), "test_macro_f1": round(test_report["macro_f1"], 4),
            "test_accuracy": round(test_report["accuracy"], 4), "recall_floor": round(recalls[worst], 4),
            "recall_floor_class": worst, "size_mb": size_mb}


def ranked(rows):
    """{key: row} sorted by validation macro-F1 (ties: smaller first), each with its rank, and `best`."""
    order = sorted(rows, key=lambda key: (-rows[key]["val_macro_f1"], rows[key]["size_mb"], key))
    board = {key: {"rank": rank, **rows[key]} for rank, key in enumerate(order, 1)}
    best = next(key for key in order if key in CANDIDATES)
    return {"ranked_by": "val_macro_f1", "best": best, **board}


def margin(board, winner):
    """How far `winner` leads the next candidate on validation macro-F1, and which one that is."""
    others = [key for key in board if key in CANDIDATES and key != winner]
    runner_up = max(others, key=lambda key: board[key]["val_macro_f1"])
    return runner_up, board[winner]["val_macro_f1"] - board[runner_up]["val_macro_f1"]


def table(board, latency_ms=None):
    lines = [f"Leaderboard, ranked by validation macro-F1 (best: {board['best']})",
             "rank  model                  val F1  test F1  test acc  worst class (recall)      size MB"
             + ("  ms/text" if latency_ms else "")]
    for key, r in board.items():
        if not isinstance(r, dict):
            continue
        worst = f"{r['recall_floor_class']} ({r['recall_floor']:.2f})"
        timing = f"  {latency_ms[key]:7.2f}" if latency_ms and key in latency_ms else ""
        lines.append(f"{r['rank']:>4}  {r['model'][:21]:<21}  {r['val_macro_f1']:.4f}  {r['test_macro_f1']:.4f}   "
                     f"{r['test_accuracy']:.4f}  {worst[:24]:<24}  {r['size_mb']:7.2f}{timing}")
    return "\n".join(lines)
