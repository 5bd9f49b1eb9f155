#!/usr/bin/env bash
# Rebuild the demo family shipped in src/vitdepth/demo_models from the digits recipe.
# Usage: bash tools/build_demo_family.sh   (about 5 minutes on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
.venv/bin/vitdepth train --recipe digits --sizes S,B,L --out "$out/fam" --quiet
for s in S B L; do
  mkdir -p "src/vitdepth/demo_models/$s"
  cp "$out/fam/$s/config.json" "$out/fam/$s/model.safetensors" "src/vitdepth/demo_models/$s/"
done
rm -rf "$out"
echo "demo family written to src/vitdepth/demo_models"
