#!/bin/bash
# What keeping the libraries' bytecode (storyboard/engine/bytecode.py) saves a whole
# `storyboard build`, where the environment keeps none: a virtual environment installed with
# `pip install --no-compile` (no .pyc files) and PYTHONDONTWRITEBYTECODE=1, as on many container
# images. Builds of the quickstart (tiny model, empty panel cache each time) alternate between
# STORYBOARD_BYTECODE=0 and the default; the first of each is reported apart (the default's
# first writes the bytecode).
#
#   bash bench/bytecode.sh [VENV]       # VENV: made if missing, default $TMPDIR/storyboard-nopyc
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${1:-${TMPDIR:-/tmp}/storyboard-nopyc}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m pip freeze --exclude-editable | sed 's/+cpu$//' > "$WORK/req.txt"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --no-compile --no-deps -r "$WORK/req.txt"
  "$VENV/bin/pip" install -q --no-compile --no-deps -e "$ROOT"
fi
export OMP_WAIT_POLICY=PASSIVE PYTHONDONTWRITEBYTECODE=1
build() { # label, cache, then env settings
  local label=$1 cache=$2; shift 2
  rm -rf "$cache/panels" "$cache/roots" "$WORK/out"
  local t0; t0=$(date +%s.%N)
  env "$@" STORYBOARD_CACHE="$cache" "$VENV/bin/python" -m storyboard.cli build --quiet \
    -o "$WORK/out" "$ROOT/examples/quickstart.yaml" > /dev/null
  echo "$label $(echo "$(date +%s.%N) - $t0" | bc) s"
}
# The tiny models are built once, untimed, and shared.
env STORYBOARD_CACHE="$WORK/models-cache" STORYBOARD_BYTECODE=0 "$VENV/bin/python" -m storyboard.cli \
  build --quiet -o "$WORK/out" "$ROOT/examples/quickstart.yaml" > /dev/null
for c in off on; do mkdir -p "$WORK/$c"; cp -r "$WORK/models-cache/models" "$WORK/$c/"; done
build "off, first" "$WORK/off" STORYBOARD_BYTECODE=0
build "on, first (writes the bytecode)" "$WORK/on" STORYBOARD_BYTECODE=1
for _ in 1 2 3; do
  build off "$WORK/off" STORYBOARD_BYTECODE=0
  build on "$WORK/on" STORYBOARD_BYTECODE=1
done
echo "kept: $(du -sh "$WORK/on/env/bytecode" | cut -f1)"
