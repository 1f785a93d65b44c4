#!/usr/bin/env bash
# filterdb quick start: build, generate a small synthetic model zoo, ingest it into a
# store, and run the paper's first questions in SQL. Offline; about 4 minutes on a cold
# 2-core machine (the build), seconds afterwards.
#
#   bash examples/quickstart.sh [WORK_DIR]      (default ./example)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-./example}"
cargo build -p filterdb-cli
BIN="${CARGO_TARGET_DIR:-target}/debug/filterdb"
rm -rf "$WORK"
mkdir -p "$WORK"
export FILTERDB_STORE="$WORK/store"

# 1. a deterministic synthetic zoo: 12 models, safetensors + model cards + manifest.csv
"$BIN" gen "$WORK/zoo" --models 12 --seed 1 --max-channels 128 --max-layers 16
# 2. a float16 store, and a parallel bulk ingest of the manifest
"$BIN" init "$FILTERDB_STORE"
"$BIN" ingest --manifest "$WORK/zoo/manifest.csv"
"$BIN" info

# 3. models and filters per task (the paper's first table)
"$BIN" sql "SELECT task, count(DISTINCT model_id) AS models, count(*) AS filters
            FROM filters_meta GROUP BY task ORDER BY filters DESC"

# 4. the paper's per-layer sparsity (a filter is sparse when all nine |w| are below 1 % of
#    the layer's largest |w|) and normalised variance entropy: the most sparse layers
"$BIN" sql "SELECT name, layer_name, round(conv_depth_norm, 2) AS depth, count(*) AS filters,
                   round(layer_sparsity(weights), 3) AS sparsity,
                   round(variance_entropy_norm(weights), 3) AS entropy_norm
            FROM filters_meta GROUP BY name, layer_name, conv_depth_norm
            ORDER BY sparsity DESC, name, depth LIMIT 8"

# 5. the paper's drift between tasks: symmetric KL of PCA-coefficient histograms
"$BIN" analyze kl-matrix --by task

# 6. a slice for a notebook: the first layers' filters as an (N, 9) float16 array
"$BIN" export --query "SELECT filter_id, model_id, layer_idx, weights FROM filters WHERE layer_idx = 0" \
    --format npy -o "$WORK/first_layers.npy"
echo "done: store in $FILTERDB_STORE; try: $BIN sql   (interactive shell, \\d lists tables)"
