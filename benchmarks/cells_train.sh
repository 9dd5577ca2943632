#!/usr/bin/env bash
# Trains the small models of benchmarks/cells.md: one epoch of WikiText-2 (the bundled copy; the 10,000
# most frequent words, the rest <unk>) for each cell, tied and projected, same recipe for all (but the
# vanilla RNNs: at lr 20 the ReLU RNN diverged within 32 batches and the tanh RNN stayed above the
# uniform loss, log 10000, after 350 batches; lr 5 for both).
# Usage: benchmarks/cells_train.sh RUNS_DIR [NAME...]   (resumable: a finished run is skipped)
set -euo pipefail
runs=${1:?usage: cells_train.sh RUNS_DIR [NAME...]}
shift
declare -A shape=(
  [lstm]="--cell lstm" [gru]="--cell gru" [rnn_tanh]="--cell rnn_tanh --lr 5" [rnn_relu]="--cell rnn_relu --lr 5"
  [lstm_tied]="--cell lstm --tied" [lstm_proj]="--cell lstm --hidden-dim 256 --proj-size 128"
)
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(lstm gru rnn_tanh rnn_relu lstm_tied lstm_proj)
for name in "${names[@]}"; do
  [ -f "$runs/$name/best/config.json" ] && continue
  resume=(); [ -d "$runs/$name/state" ] && resume=(--resume)
  # shellcheck disable=SC2086
  python -m wordlm train --out "$runs/$name" --preset tiny --emb-dim 128 --hidden-dim 128 --num-layers 2 \
    --dropout 0.2 --max-vocab 10000 --batch-size 40 --epochs 1 --threads 1 ${shape[$name]} "${resume[@]}"
done
