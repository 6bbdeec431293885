#!/usr/bin/env bash
# Quick sender experiments (the issue-4 ablations in README "Quality"): one training stage at
# M=32 with KD+CE from scratch, then the latent evaluation on 16 eval questions per dataset,
# in a scratch folder that borrows this checkout's data/mix, data/kd and text baselines
# (run `dvc repro` once first). Not a DVC stage: a research tool; numbers are noisy (n=16).
#
#   bench/quick_exp.sh NAME 'PYTHON EDITS OF p (the params dict)'
#   bench/quick_exp.sh bytes64 "p['models']={'llama':p['models']['llama']}; p['encoder'].update(kind='bytes'); p['wire']['shared_fraction']=0.75; p['stage1']['epochs']=4"
#
# Writes /tmp/latentwire-exp/NAME/ and prints F1 / distinct ratio per precision and Z cosine.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
name=$1; edits=${2:-}
d=${EXP_ROOT:-/tmp/latentwire-exp}/$name
rm -rf "$d"; mkdir -p "$d/data/eval" "$d/metrics/train"
ln -s "$repo/data/mix" "$d/data/mix"; ln -s "$repo/data/kd" "$d/data/kd"
cp "$repo/data/eval/text_baselines.json" "$d/data/eval/"
python - "$repo" "$d" "$edits" <<'PY'
import sys, yaml
from pathlib import Path
repo, d, edits = sys.argv[1:]
p = yaml.safe_load(open(f"{repo}/params.yaml"))
p["data"]["root"] = str((Path(repo) / p["data"]["root"]).resolve())
p["stage1"].update(M=32, ce=1.0, kd=1.0)
p["evaluate"]["max_examples"] = 16
exec(edits)
yaml.safe_dump(p, open(f"{d}/params.yaml", "w"))
PY
cd "$d"
python -m latentwire train stage1 --params params.yaml
python -m latentwire evaluate --part latent --params params.yaml --checkpoint models/stage1/best \
  --baselines data/eval/text_baselines.json
python - <<'PY'
import json
m = json.load(open("metrics/eval.json"))
t = json.load(open("metrics/train/stage1.json"))
for s, res in m.items():
    if isinstance(res, dict) and "squad" in res and "latent_int4" in res["squad"]:
        for ds in ("squad", "nq", "hotpotqa"):
            r = res[ds]
            lat = " ".join(f"{k[7:]} {r[k]['f1']:.3f}/{r[k]['distinct_ratio']:.2f}" for k in r if k.startswith("latent_"))
            print(f"{s} {ds}: text {r['text']['f1']:.3f} | latent F1/distinct {lat} | Z cos {r['z_pairwise_cosine']:.3f}")
print("steps", t["steps"], "best", t["best"], "wall", t["wall_s"], "s")
PY
