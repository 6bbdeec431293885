#!/usr/bin/env bash
# The long profile: the same pipeline with the curriculum's knobs turned up, for a GPU (or a
# patient CPU). Not the default: on this project's 2-core CPU it would take many hours, and it
# has not been run here (no GPU was lent). The default (params.yaml) fits `dvc repro` in ~30 min.
#
#   bench/profile_long.sh [extra -S overrides...]     # e.g. -S data.datasets.squad.source=hub
#
# What it changes, and why (README "Quality"): every train example the offline data allows
# (data.train_examples; with hub sources, far more), a longer codec warm start, 8 / 8 / 48
# epochs (the seed plan's long horizon, cosine over each whole stage, best epoch reported),
# and the evaluation on every eval question.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m dvc exp run -n long \
  -S data.train_examples=2000 \
  -S data.datasets.squad.max_eval=500 -S data.datasets.nq.max_eval=500 -S data.datasets.hotpotqa.max_eval=100 \
  -S train.codec_steps=5000 -S train.eval_every=50 -S train.save_every=50 \
  -S stage1.epochs=8 -S stage2.epochs=8 -S stage3.epochs=48 \
  "$@"
