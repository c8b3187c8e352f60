"""The int8 model's size and accuracy with its word-embedding table in 8 bits (the dynamic quantizer's) or in 4-bit
blocks (export.int8_embedding_bits), on the fine-tuned models of several data shapes, in one run.

    python -m bench.int8_embeddings               # the default run's model, and bench/quality.py's where present
    python -m bench.int8_embeddings --blocks 32,64,128

Each model is exported to ONNX fp32 and quantized as the export stage does (export.int8: auto, per-channel,
export.int8_smoothing, calibrated on export.int8_calibration_texts training texts), once per table layout. Reported
per model and layout: the file's size and its share of fp32's, the RMS distance of the int8 logits from fp32's and
the labels that flip on the validation split, and test accuracy. Writes bench/results/int8_embeddings.json and
bench/int8_embeddings.md.
"""
import argparse
from pathlib import Path

import torch
import yaml

from bench.inference import cpu
from bench.int8_smoothing import run

ROOT = Path(__file__).resolve().parent.parent
RESULTS, TABLE = ROOT / "bench/results/int8_embeddings.json", ROOT / "bench/int8_embeddings.md"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", default="32,64,128", help="values per scale of the 4-bit tables compared")
    args = parser.parse_args()
    smoothing = yaml.safe_load((ROOT / "params.yaml").read_text())["export"]["int8_smoothing"]
    variants = {"8-bit": {"smoothing": smoothing, "embedding_bits": 8},
                **{f"4-bit/{block}": {"smoothing": smoothing, "embedding_bits": 4, "embedding_block": int(block)}
                   for block in args.blocks.split(",")}}
    result = {"cpu": cpu(), "torch": torch.__version__, "smoothing": smoothing, "layouts": list(variants),
              "models": {}, "command": f"python -m bench.int8_embeddings --blocks {args.blocks}"}
    run(result, variants, RESULTS, TABLE, markdown)


def markdown(r):
    names = list(r["models"])
    lines = [f"`{r['command']}` on {r['cpu']['name']} (AVX-512 VNNI: {'yes' if r['cpu']['avx512_vnni'] else 'no'}), "
             f"torch {r['torch']}, int8 smoothing {r['smoothing']}. Each cell: the int8 file's share of the fp32 "
             "file / the int8 logits' RMS distance from fp32's on the validation split / labels flipped there / "
             "test accuracy (fp32's in the header). `4-bit/N`: the word-embedding table in 4 bits, one scale and "
             "zero point per N values.", "",
             "| embedding table | " + " | ".join(f"{n} (fp32 {r['models'][n]['fp32_test_accuracy']}, "
                                               f"{r['models'][n]['fp32_mb']} MB)" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for layout in r["layouts"]:
        cells = [r["models"][n][layout] for n in names]
        lines.append(f"| {layout} | " + " | ".join(
            f"{c['of_fp32']:.1%} / {c['validation_logit_rms_error']} / {c['validation_flips']} / {c['test_accuracy']}"
            for c in cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
