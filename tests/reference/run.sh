#!/usr/bin/env bash
# The independent reference checks of filterdb's SQL functions (numpy / scipy / scikit-learn).
# CI: bash tests/reference/run.sh   (expects the debug binary; set FILTERDB_BIN to use another)
# Fixtures (pinned PyPI wheels with real trained CNNs) are cached in
# ${FILTERDB_FIXTURES:-$HOME/.cache/filterdb-fixtures}, never in the repository.
# The last line printed is "N passed, M failed"; the exit code is non-zero on any failure.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
export FILTERDB_BIN="${FILTERDB_BIN:-${CARGO_TARGET_DIR:-$repo/target}/debug/filterdb}"
python="${PYTHON:-python3}"

if ! "$python" -m pip install -q --disable-pip-version-check -r "$here/requirements.txt"; then
    echo "reference: pip install -r tests/reference/requirements.txt failed"
    echo "0 passed, 1 failed"
    exit 1
fi
if ! "$python" "$here/fetch_models.py"; then
    echo "reference: fetch_models.py failed (real-model checks cannot run)"
    echo "0 passed, 1 failed"
    exit 1
fi
if [ ! -x "$FILTERDB_BIN" ]; then
    (cd "$repo" && cargo build -q -p filterdb-cli) || { echo "reference: cannot build filterdb"; echo "0 passed, 1 failed"; exit 1; }
fi
work="$(mktemp -d "${TMPDIR:-/tmp}/filterdb-reference.XXXXXX")"
trap 'rm -rf "$work"' EXIT
REFERENCE_WORK="$work" "$python" "$here/check.py"
