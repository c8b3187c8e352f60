"""Time the default pipeline stage by stage and print the figures README.md quotes.

    python bench/default_run.py            # re-runs every stage (dvc repro --force -s <stage>), ~20 min on 2 CPU cores
    python bench/default_run.py --no-run   # only the figures, from the metrics already in metrics/

Writes bench/default_run.md (only a full run writes the stage timings).
"""
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

STAGES = ("prepare", "baseline", "pretrain", "finetune", "peft", "evaluate", "export")
OUT = Path("bench/default_run.md")


def metrics(name):
    return json.loads(Path(f"metrics/{name}.json").read_text())


def main():
    seconds = {}
    if "--no-run" not in sys.argv:
        for stage in STAGES:
            started = time.perf_counter()
            subprocess.run(["dvc", "repro", "--force", "--single-item", stage], check=True)
            seconds[stage] = time.perf_counter() - started
    pretrain, finetune, peft = metrics("pretrain"), metrics("finetune"), metrics("peft")
    evaluate, export = metrics("evaluate"), metrics("export")
    finetune_time, peft_time, export_time = metrics("timing/finetune"), metrics("timing/peft"), metrics("timing/export")
    lines = [f"Default `params.yaml`, {platform.machine()} CPU with {torch.get_num_threads()} threads, "
             f"torch {torch.__version__}, no GPU.", ""]
    if seconds:
        lines += ["| stage | wall seconds |", "|---|---|"]
        lines += [f"| {stage} | {s:.0f} |" for stage, s in seconds.items()]
        lines += [f"| **total** | **{sum(seconds.values()):.0f}** ({sum(seconds.values()) / 60:.1f} min) |", ""]
    lines += [
        "| figure | value |", "|---|---|",
        f"| held-out MLM loss before → after pretraining | {pretrain.get('mlm_loss_before', float('nan')):.3f} → "
        f"{pretrain.get('mlm_loss_after', float('nan')):.3f} |",
        f"| full fine-tune: test accuracy / macro-F1 | {evaluate['finetune']['accuracy']:.4f} / "
        f"{evaluate['finetune']['macro_f1']:.4f} |",
        f"| {peft['strategy']}: test accuracy / macro-F1 | {evaluate['peft']['accuracy']:.4f} / "
        f"{evaluate['peft']['macro_f1']:.4f} |",
        f"| TF-IDF + logistic-regression baseline: test accuracy / macro-F1 | "
        f"{evaluate['baseline']['accuracy']:.4f} / {evaluate['baseline']['macro_f1']:.4f} |",
        f"| quality warnings (evaluate) | {', '.join(w['kind'] + ' (' + w['model'] + ')' for w in evaluate['warnings']) or 'none'} |",
        f"| {peft['strategy']} macro-F1 as a fraction of the full fine-tune's | "
        f"{evaluate['peft_macro_f1_vs_finetune']:.3f} |",
        f"| trainable parameters: full fine-tune / {peft['strategy']} | {finetune['trainable_params']:,} / "
        f"{peft['trainable_params']:,} ({peft['trainable_fraction']:.2%}) |",
        f"| train seconds: full fine-tune / {peft['strategy']} / baseline | {finetune_time['train_seconds']:.0f} / "
        f"{peft_time['train_seconds']:.0f} / {metrics('timing/baseline')['fit_seconds']:.0f} |",
        f"| exported ({export['source']}) test accuracy: PyTorch fp32 / ONNX fp32 / ONNX int8 | "
        + " / ".join(f"{export['test_accuracy'][k]:.4f}" for k in ("pytorch_fp32", "onnx_fp32", "onnx_int8")) + " |",
        "| size on disk MB: PyTorch fp32 / ONNX fp32 / ONNX int8 | "
        + " / ".join(f"{export['size_mb'][k]:.1f}" for k in ("pytorch_fp32", "onnx_fp32", "onnx_int8")) + " |",
    ]
    for batch in ("batch1", "batch32"):
        ms = export_time["latency_ms"][batch]
        lines.append(f"| latency ms, {batch.replace('batch', 'batch ')} × {export_time['latency_seq_length']} tokens: "
                     f"PyTorch fp32 / ONNX fp32 / ONNX int8 | {ms['pytorch_fp32']:.1f} / {ms['onnx_fp32']:.1f} / "
                     f"{ms['onnx_int8']:.1f} (int8 {ms['pytorch_fp32'] / ms['onnx_int8']:.2f}× faster than PyTorch) |")
    text = "\n".join(lines) + "\n"
    OUT.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
