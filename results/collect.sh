#!/usr/bin/env bash
# Copy a finished sweep's report into the repository: text files under results/NAME/,
# figures under figures/NAME/ (report.md's figure links rewritten to point there).
# Usage: bash results/collect.sh SWEEP_DIR NAME      (run from the repository root)
set -euo pipefail
sweep=$1; name=$2
smartmixed report "$sweep" >/dev/null
mkdir -p "results/$name" "figures/$name"
for f in summary.csv report.md report.json layer_preferences.csv depth_preferences.csv weight_stats.csv sweep.json; do
  cp "$sweep/$f" "results/$name/$f"
done
cp "$sweep"/figures/*.png "figures/$name/"
sed -i "s#](figures/#](../../figures/$name/#g" "results/$name/report.md"
echo "results/$name and figures/$name updated"
