#!/usr/bin/env bash
# Everything one short GPU lease should measure, as one prepared script (the lease is 15
# minutes of device time in all, so each stage has its own time limit and writes what it
# has before the next one starts):
#
#   1. with GRID=1 only: SevenNet-0's defaults grid (issue 14.4), sigma_TL x gamma_0, one
#      process per grid point, all on the GPU at once (the chains one after another in each
#      process), joined with defaults.py --merge into defaults_sevenn.json. Off by default:
#      on an H200 a point took about 11 minutes, no faster than 2 CPU cores
#      (docs/measurements.md, "GPU cost"), and the grid has run on a CPU since;
#   2. the gpu-marked tests (the device code paths on CUDA);
#   3. gpu_cost.py for the two families whose weights ship in their wheels.
#
# Usage, from the repository root, on the GPU machine:
#   OUT=/some/dir bash benchmarks/gpu_session.sh
# Dependencies the machine lacks travel as wheels in $WHEELS (default .whl/: cp312,
# manylinux; docs/development.md, "GPU runs") and are installed into $SITE first.
# A dry run of the whole script on a CPU, in a minute or two:
#   DEVICE=cpu SMOKE=1 SIGMAS=0.2 STEP_SIZES=1e-3 OUT=/tmp/dry bash benchmarks/gpu_session.sh
set -u
OUT="${OUT:-$(mktemp -d)}"
PY="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"
WHEELS="${WHEELS:-.whl}"
SITE="${SITE:-/tmp/site}"
if [ -n "${SMOKE:-}" ]; then grid_steps=4; cost_args=(--device "$DEVICE" --smoke --systems ethanol)
else grid_steps=300; cost_args=(--device "$DEVICE"); fi
# the gpu-marked tests run on the CPU in a dry run
[ "$DEVICE" = cpu ] && export OTF_GPU_TESTS_ON=cpu
mkdir -p "$OUT"
parts="$(mktemp -d)"
export PYTHONUNBUFFERED=1
log() { echo "[gpu_session ${SECONDS} s] $*"; }

if [ -d "$WHEELS" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$WHEELS"/*.whl || { log "wheel install failed"; exit 1; }
  export PYTHONPATH="$SITE:$PWD/src:$PWD"
else
  export PYTHONPATH="$PWD/src:$PWD"
fi
"$PY" - <<'PY' || { log "imports failed"; exit 1; }
import e3nn, numpy, torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-",
      "numpy", numpy.__version__, "e3nn", e3nn.__version__)
import atomate2_otf.flows, chgnet.model, jobflow, maggma, sevenn, tblite.ase  # noqa
PY
log "installed"

# 1. SevenNet-0 grid, one process per point (a killed point keeps nothing; the others do)
sigmas="${SIGMAS:-0.05 0.2 0.5}"
steps="${STEP_SIZES:-3e-4 1e-3}"
grid=()
[ -n "${GRID:-}" ] && for s in $sigmas; do
  for g in $steps; do
    OMP_NUM_THREADS=2 timeout "${GRID_LIMIT_S:-270}" "$PY" benchmarks/defaults.py \
      --models sevenn-0 --sigmas "$s" --step-sizes "$g" \
      --systems methanol-xtb acetone-xtb al-emt ni-emt \
      --steps "$grid_steps" --chains 4 --workers 0 --device "$DEVICE" \
      --out "$parts/defaults_sevenn_${s}_${g}.json" >"$parts/grid_${s}_${g}.log" 2>&1 &
    grid+=($!)
  done
done

# 2. meanwhile, the gpu-marked tests (they time nothing)
timeout "${TESTS_LIMIT_S:-150}" "$PY" -m pytest -m gpu -q -x -p no:cacheprovider \
  tests/bnn/test_gpu.py tests/models/test_gpu.py tests/workflow/test_device.py
log "gpu tests done (rc $?)"

if [ -n "${GRID:-}" ]; then
  wait "${grid[@]}"
  for f in "$parts"/grid_*.log; do echo "== $f"; tail -n 4 "$f"; done
  "$PY" benchmarks/defaults.py --merge "$parts"/defaults_sevenn_*.json \
    --out "$OUT/defaults_sevenn.json" | tail -n 25
  log "grid done"
fi

# 3. the cost table, alone on the device (its ratios are taken within this one run)
timeout "${COST_LIMIT_S:-400}" "$PY" benchmarks/gpu_cost.py --models chgnet sevenn-0 \
  "${cost_args[@]}" --out "$OUT/gpu_cost.json"
log "gpu_cost done (rc $?)"
