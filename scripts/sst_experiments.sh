#!/usr/bin/env bash
# Reproduce the "pretraining pays" results table in README.md:
#   unlabelled corpus -> WordPiece tokenizer -> causal and masked pretraining ->
#   SST-2 (3 seeds), TREC and SST-5 (1 seed) fine-tuning, from scratch and from each pretraining run
#   (SST-2 also from the causal run's best-validation checkpoint: scripts/best_checkpoint.py).
# Jobs run JOBS at a time (default 2), one XLA thread each (scripts/run_jobs.sh). A finished run
# directory only re-reports on a rerun; an interrupted one resumes.
# Usage: scripts/sst_experiments.sh [seeds for SST-2, default "0 1 2"]
set -euo pipefail
cd "$(dirname "$0")/.."
J=".venv/bin/jaxlm"
SEEDS=${1:-"0 1 2"}
N=${JOBS:-2}
jobs=$(mktemp)

.venv/bin/python scripts/make_pretrain_corpus.py
[ -f runs/tokenizers/sst_wordpiece/tokenizer.json ] || $J train-tokenizer --quiet \
  --data text:runs/corpus/pretrain.txt --kind wordpiece --vocab-size 8000 --out runs/tokenizers/sst_wordpiece

printf '%s\n' "$J pretrain --config configs/pretrain_sst_causal.yaml --quiet" \
              "$J pretrain --config configs/pretrain_sst_masked.yaml --quiet" > "$jobs"
scripts/run_jobs.sh "$jobs" "$N"

finetune_jobs () {  # task seed
  local task=$1 seed=$2 out=runs/$1 ft="$J finetune --quiet --set train.seed=$2"
  echo "$ft --config configs/${task}_scratch.yaml --run $out/scratch_bert_s$seed"
  echo "$ft --config configs/${task}_pretrained.yaml --run $out/masked_s$seed"
  echo "$ft --config configs/${task}_scratch.yaml --set model.family=gpt2 --run $out/scratch_gpt2_s$seed"
  echo "$ft --config configs/${task}_pretrained.yaml --init-from runs/pretrain_sst_causal --run $out/causal_s$seed"
  [ "$task" = sst2 ] && echo "$ft --config configs/${task}_pretrained.yaml --init-from $causal_best --run $out/causal_es_s$seed"
  return 0
}
# the causal LM overfits the small corpus: also fine-tune SST-2 from its best-validation checkpoint
causal_best=$(.venv/bin/python scripts/best_checkpoint.py runs/pretrain_sst_causal)
: > "$jobs"
for seed in $SEEDS; do finetune_jobs sst2 "$seed" >> "$jobs"; done
finetune_jobs trec 0 >> "$jobs"
finetune_jobs sst5 0 >> "$jobs"
scripts/run_jobs.sh "$jobs" "$N"
rm -f "$jobs"
.venv/bin/python scripts/results_table.py runs/sst2 runs/trec runs/sst5
