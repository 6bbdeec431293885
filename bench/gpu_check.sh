#!/usr/bin/env bash
# GPU check: the whole pipeline on the embedded default with every model on one GPU
# (models.*.device_map: cuda:0), in a temporary copy of the project. Prints the wall time of
# each DVC stage (every stage of dvc.yaml, in its order), where each curriculum stage placed
# the models, and the eval table (`python -m latentwire report`). Nothing in this checkout is touched.
#
#   bench/gpu_check.sh                                       # the embedded default, as in params.yaml
#   bench/gpu_check.sh train.batch_size=32 stage3.epochs=4   # dotted overrides (YAML values)
#
# Env: PY (default python3), LATENTWIRE_DATA (default ../shared/data), KEEP=1 keeps the copy,
# ALLOW_CPU=1 runs without a GPU (device_map left null), DRY=1 stops before the first stage, once
# the copy's params are checked and its stages listed (with ALLOW_CPU=1: tests/test_bench.py).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-python3}

if [ "${ALLOW_CPU:-0}" != 1 ]; then
  "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else
            "gpu_check: no CUDA GPU visible (ALLOW_CPU=1 runs it on CPU)")'
  "$PY" -c 'import torch; p = torch.cuda.get_device_properties(0);
print(f"gpu_check: cuda:0 = {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}")'
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/latentwire-gpu-check.XXXXXX")
if [ "${KEEP:-0}" = 1 ]; then echo "gpu_check: working in $WORK (kept)"; else trap 'rm -rf "$WORK"' EXIT; fi
cp -r "$REPO/dvc.yaml" "$REPO/.dvcignore" "$REPO/pyproject.toml" "$REPO/params.yaml" "$WORK/"
cp -r "$REPO/src" "$WORK/src"
export LATENTWIRE_DATA=${LATENTWIRE_DATA:-$(cd "$REPO/../shared/data" && pwd)}
export PYTHONPATH="$WORK/src${PYTHONPATH:+:$PYTHONPATH}"   # this copy's code
export LATENTWIRE_PROCESSES=1                               # one GPU, one process
export DVC_NO_ANALYTICS=1
cd "$WORK"

"$PY" - "$@" <<'EOF'
import os, sys, torch, yaml
raw = yaml.safe_load(open("params.yaml"))
raw["data"]["root"] = os.environ["LATENTWIRE_DATA"]  # dvc.yaml depends on it: absolute here
if torch.cuda.is_available():
    for m in raw["models"].values():
        m["device_map"] = "cuda:0"
for item in sys.argv[1:]:
    key, value = item.split("=", 1)
    *path, last = key.split(".")
    node = raw
    for k in path:
        node = node.setdefault(k, {})
    node[last] = yaml.safe_load(value)
yaml.safe_dump(raw, open("params.yaml", "w"), sort_keys=False)
print("gpu_check: models on", {s: m.get("device_map") for s, m in raw["models"].items()})
EOF
"$PY" -c 'from latentwire.config import load_params; load_params("params.yaml")'  # fail early

git init -q && git config user.email gpu-check@example.com && git config user.name gpu-check
"$PY" -m dvc init -q
git add -A && git commit -qm "gpu check" # dvclive needs a commit to compare against
mkdir -p logs
stages=$("$PY" -m dvc stage list --name-only)
if [ "${DRY:-0}" = 1 ]; then echo "gpu_check: would run" $stages; exit 0; fi
total=0
for stage in $stages; do   # in dvc.yaml's order: each repro finds its upstream done and runs its own stage
  t0=$(date +%s%N)
  if ! "$PY" -m dvc repro "$stage" > "logs/$stage.log" 2>&1; then
    echo "gpu_check: stage $stage FAILED; last lines of its log:"; tail -40 "logs/$stage.log"; exit 1
  fi
  ms=$(( ($(date +%s%N) - t0) / 1000000 )); total=$((total + ms))
  printf 'gpu_check: %-26s %8.1f s\n' "$stage" "$(echo "$ms" | awk '{print $1 / 1000}')"
done
printf 'gpu_check: %-26s %8.1f s\n' "total" "$(echo "$total" | awk '{print $1 / 1000}')"

"$PY" - <<'EOF'
import json, pathlib
for path in sorted(pathlib.Path("metrics/train").glob("*.json")):
    m = json.loads(path.read_text())
    print(f"{path.stem}: M={m['M']} steps={m['steps']} best={m['best']} wall_s={m['wall_s']} "
          f"placement={m['run']['placement']} events={m['events']}")
EOF
"$PY" -m latentwire report
