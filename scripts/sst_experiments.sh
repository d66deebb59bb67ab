#!/usr/bin/env bash
# Reproduce the "pretraining pays" results table in README.md:
#   unlabelled corpus -> WordPiece tokenizer -> causal and masked pretraining ->
#   SST-2 (3 seeds), SST-5 and TREC (1 seed) fine-tuning, from scratch and from each pretraining run.
# Finished runs are skipped on a rerun (each run directory resumes, and a finished one only re-reports).
# Usage: scripts/sst_experiments.sh [seeds for SST-2, default "0 1 2"]
set -euo pipefail
cd "$(dirname "$0")/.."
J=".venv/bin/jaxlm"
SEEDS=${1:-"0 1 2"}

.venv/bin/python scripts/make_pretrain_corpus.py
[ -f runs/tokenizers/sst_wordpiece/tokenizer.json ] || $J train-tokenizer --quiet \
  --data text:runs/corpus/pretrain.txt --kind wordpiece --vocab-size 8000 --out runs/tokenizers/sst_wordpiece
$J pretrain --config configs/pretrain_sst_causal.yaml --quiet
$J pretrain --config configs/pretrain_sst_masked.yaml --quiet

finetune_all () {  # task seed
  local task=$1 seed=$2 out=runs/$1
  $J finetune --config configs/${task}_scratch.yaml --set train.seed=$seed --quiet \
    --run-dir $out/scratch_bert_s$seed
  $J finetune --config configs/${task}_pretrained.yaml --set train.seed=$seed --quiet \
    --run-dir $out/masked_s$seed
  $J finetune --config configs/${task}_scratch.yaml --set model.family=gpt2 --set train.seed=$seed \
    --quiet --run-dir $out/scratch_gpt2_s$seed
  $J finetune --config configs/${task}_pretrained.yaml --init-from runs/pretrain_sst_causal \
    --set train.seed=$seed --quiet --run-dir $out/causal_s$seed
}
for seed in $SEEDS; do finetune_all sst2 $seed; done
finetune_all trec 0
finetune_all sst5 0
.venv/bin/python scripts/results_table.py runs/sst2 runs/trec runs/sst5
