#!/usr/bin/env bash
# Draw the README's training-curve figures with `jaxlm plot` from the runs under runs/:
#   docs/images/training_curves.png  Tiny Shakespeare, character level (configs/shakespeare_char.yaml)
#   docs/images/pretrain_sst.png     causal vs masked pretraining (configs/pretrain_sst_*.yaml)
#   docs/images/sst2_finetune.png    SST-2 fine-tuning, seed 0: scratch vs pretrained (scripts/sst_experiments.sh)
# Runs still being written (metrics.jsonl changed in the last 10 minutes, not finished) are left
# out, so a figure never freezes a moving curve (pass --all to draw them anyway); a run stopped
# early on purpose is drawn as far as it went. A figure with no run is skipped and says so.
# Rerun after the runs finish, then commit docs/images/.
# Usage: scripts/make_readme_plot.sh [--all]
set -euo pipefail
cd "$(dirname "$0")/.."
J=".venv/bin/jaxlm"
PY=".venv/bin/python"
OUT=docs/images
INCLUDE=${1:-finished}
mkdir -p "$OUT"

# figure OUT TITLE RUN_DIR=LABEL ...: plot the listed runs that exist (and are finished)
figure () {
  local out=$1 title=$2; shift 2
  local picked
  picked=$("$PY" - "$INCLUDE" "$@" <<'PYEOF'
import sys
import time
from pathlib import Path
from jaxlm.run import Run
dirs, labels = [], []
for item in sys.argv[2:]:
    run, label = item.split("=", 1)
    p = Path(run)
    if not (Run.is_run_dir(p) and (p / "metrics.jsonl").is_file()):
        continue
    info = Run(p).describe(count_params=False)
    idle_s = time.time() - (info["updated"] or 0)
    if sys.argv[1] != "--all" and info["status"] != "finished" and idle_s < 600:
        print(f"skipping {run}: still running (pass --all to draw it anyway)", file=sys.stderr)
        continue
    dirs.append(run)
    labels.append(label)
print(" ".join(dirs))
print(",".join(labels))
PYEOF
)
  local dirs labels
  dirs=$(sed -n 1p <<<"$picked")
  labels=$(sed -n 2p <<<"$picked")
  if [ -z "$dirs" ]; then
    echo "skipping $out: none of its runs is there (or done) yet"
    return
  fi
  # shellcheck disable=SC2086  # run directories are plain paths without spaces
  "$J" plot $dirs --labels "$labels" --title "$title" --out "$out"
}

figure "$OUT/training_curves.png" "Tiny Shakespeare, character level (nanoGPT CPU config)" \
  "runs/shakespeare_char=shakespeare_char"
figure "$OUT/pretrain_sst.png" "Pretraining on the SST/TREC sentence corpus" \
  "runs/pretrain_sst_causal=causal (GPT-2)" "runs/pretrain_sst_masked=masked (BERT)"
figure "$OUT/sst2_finetune.png" "SST-2 fine-tuning (seed 0)" \
  "runs/sst2/scratch_bert_s0=BERT from scratch" "runs/sst2/masked_s0=from masked LM" \
  "runs/sst2/scratch_gpt2_s0=GPT-2 from scratch" "runs/sst2/causal_s0=from causal LM" \
  "runs/minilm_sst2/s0=MiniLM (Hugging Face)"
