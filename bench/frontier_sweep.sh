#!/usr/bin/env bash
# Frontier sweep: the final latent length M over {8, 16, 32, 64} as queued DVC experiments,
# then one table + plot of latent F1 against wire bytes beside the text baselines.
#
#   bench/frontier_sweep.sh [extra -S overrides...]
#   e.g. bench/frontier_sweep.sh -S evaluate.max_examples=8     # a quick, smaller sweep
#
# Each experiment reruns stage3, text-baselines (the M-token and equal-byte cuts depend on M)
# and evaluate from the committed state. Queued experiments run in a temporary copy of the
# repository, where the relative data.root (../shared/data) points nowhere: the script passes
# it as an absolute path (prepare-mix reruns in 1 s and writes the same mix, so nothing
# downstream of it reruns for that). Results: bench/results/frontier.{md,png,json}.
set -euo pipefail
cd "$(dirname "$0")/.."
MS=${MS:-"8 16 32 64"}
root=$(python -c "import yaml, pathlib; print(pathlib.Path(yaml.safe_load(open('params.yaml'))['data']['root']).resolve())")
for M in $MS; do
  python -m dvc exp run --queue -n "frontier-M$M" -S "stage3.M=$M" -S "data.root=$root" "$@"
done
python -m dvc exp run --run-all --jobs 1
python bench/frontier_table.py --names $(for M in $MS; do printf 'frontier-M%s ' "$M"; done)
