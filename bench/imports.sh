#!/bin/bash
# Does this machine's Python keep the libraries' bytecode, and what do a build's imports cost?
# Prints the bytecode settings, how many of torch's modules have a .pyc beside them, and the
# wall time of three new processes importing what a build imports; writes an -X importtime
# log and a cProfile of those imports (sorted by own time) into OUT (default: a temp folder).
#
#   bash bench/imports.sh [OUT]
set -uo pipefail
OUT=${1:-$(mktemp -d)}
mkdir -p "$OUT"
IMPORTS="import torch, transformers; from diffusers import StableDiffusionXLPipeline, KolorsPipeline"
env | grep -E '^PYTHON(DONTWRITEBYTECODE|PYCACHEPREFIX)=' || echo "no bytecode variables set"
python3 -c "import sys; print('python', sys.version.split()[0], 'dont_write_bytecode',
sys.flags.dont_write_bytecode, 'pycache_prefix', sys.pycache_prefix)"
python3 - <<'PY'
import importlib.util, os
for name in ("torch", "torch._dynamo", "transformers", "diffusers"):
    spec = importlib.util.find_spec(name)
    folder = os.path.dirname(spec.origin)
    sources = [f for f in os.listdir(folder) if f.endswith(".py")]
    cached = [f for f in sources if os.path.isfile(importlib.util.cache_from_source(
        os.path.join(folder, f)))]
    print(f"{name}: {len(cached)} of {len(sources)} modules have bytecode; "
          f"folder writable: {os.access(folder, os.W_OK)}")
PY
for i in 1 2 3; do
  t0=$(date +%s.%N); python3 -c "$IMPORTS"
  echo "imports, process $i: $(echo "$(date +%s.%N) - $t0" | bc) s"
done
python3 -X importtime -c "$IMPORTS" 2> "$OUT/importtime.txt"
python3 -c "import cProfile, pstats; cProfile.run('$IMPORTS', '$OUT/imports.prof'); \
pstats.Stats('$OUT/imports.prof').sort_stats('tottime').print_stats(25)" > "$OUT/profile.txt"
grep -m1 "builtins.compile" "$OUT/profile.txt" || true
echo "logs in $OUT"
