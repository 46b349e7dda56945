#!/bin/bash
# The CoOp speed benchmark as one call on a lent GPU machine (the device tool), whose image has torch and
# timm but not open_clip. Prepare the wheels here first (they go in /.whl, which git ignores):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 -d .whl open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.7.0
#
# then run this script there with carry [".whl"]. Output: $OUT/coop_speed.json and coop_speed.log (stdout).
# Extra arguments go to examples/bench_coop_speed.py (e.g. --device cpu --tiny to try it on a CPU first).
set -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
if ! python3 -c "import open_clip" 2>/dev/null; then
    ls .whl/*.whl >/dev/null 2>&1 || { echo "open_clip is missing and there are no wheels in .whl/"; exit 2; }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 2
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
python3 -c "import torch, open_clip; print('torch', torch.__version__, 'open_clip', open_clip.__version__,
      'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())" 2>&1 | tee "$OUT/coop_speed.log"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee -a "$OUT/coop_speed.log"
timeout "${BENCH_TIMEOUT_S:-480}" python3 examples/bench_coop_speed.py --json "$OUT/coop_speed.json" "$@" 2>&1 \
    | tee -a "$OUT/coop_speed.log"
