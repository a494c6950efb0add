#!/usr/bin/env bash
# Idempotent install of the AllInOne stack into a virtualenv (default .venv).
#   tools/install_env.sh [VENV]
# The mmcv 2.1.0 build (compiled ops, CPU) takes 9-21 min on 2 cores; the built wheel is kept in
# $ALLINONE_WHEEL_CACHE (default ~/.cache/allinone/wheels) and reused by later installs on this machine.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${1:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
WHEELS="${ALLINONE_WHEEL_CACHE:-$HOME/.cache/allinone/wheels}"
STAMP="$VENV/.allinone-installed"
REQ="$ROOT/requirements.txt"
want="$(cat "$REQ" "$0" "$ROOT/pyproject.toml" | sha1sum | cut -c1-12)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  echo "[install] $VENV is up to date"; exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip "$@"; }
log() { echo "[install $(date +%H:%M:%S)] $*"; }

log "torch + torchvision (PyPI builds; the local CPU-only torch breaks PyPI's torchvision)"
PIP_FIND_LINKS=" " pip install -q torch==2.13.0 torchvision==0.28.0

mkdir -p "$WHEELS"
MMCV_WHL="$(ls "$WHEELS"/mmcv-2.1.0-*.whl 2>/dev/null | head -n1 || true)"
if [ -z "$MMCV_WHL" ]; then
  log "building mmcv 2.1.0 with its compiled ops (9-21 min on 2 cores; cached in $WHEELS afterwards)"
  pip install -q "setuptools<70" wheel ninja  # mmcv's setup.py needs the old pkg_resources
  # a private build folder under the cache (not the shared /tmp, where a cleaner can remove a folder
  # during the 9-21 min build and pip then writes the wheel as a file of that name); pip's own build
  # and temporary files go there too
  build="$WHEELS/build.$$"
  rm -rf "$build" && mkdir -p "$build/tmp" "$build/out"
  TMPDIR="$build/tmp" MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="${MAX_JOBS:-2}" \
    pip wheel -q --no-deps --no-build-isolation -w "$build/out" mmcv==2.1.0
  built=("$build"/out/mmcv-2.1.0-*.whl)
  if [ "${#built[@]}" -ne 1 ] || [ ! -f "${built[0]}" ]; then
    echo "[install] the mmcv build left no single wheel file in $build/out: ${built[*]}" >&2; exit 1
  fi
  "$VENV/bin/python" -m zipfile -l "${built[0]}" >/dev/null || {
    echo "[install] ${built[0]} is not a readable wheel" >&2; exit 1; }
  # move under a temporary name, then rename: a concurrent install never sees half a wheel
  mv "${built[0]}" "$WHEELS/.partial.$$" && mv "$WHEELS/.partial.$$" "$WHEELS/$(basename "${built[0]}")"
  rm -rf "$build"
  MMCV_WHL="$(ls "$WHEELS"/mmcv-2.1.0-*.whl | head -n1)"
else
  log "reusing cached $MMCV_WHL"
fi
pip install -q --no-deps "$MMCV_WHL"

log "OpenMMLab packages and the rest of requirements.txt"
PIP_FIND_LINKS=" " pip install -q -r "$REQ"

log "the project itself (editable: projects.allinone importable from tools/, benchmarks/, tests/)"
PIP_FIND_LINKS=" " pip install -q --no-deps --no-build-isolation -e "$ROOT"
"$VENV/bin/python" - <<'PY'
import torch, torchvision, mmcv, mmengine, mmdet, mmseg, mmpretrain
import projects.allinone.benchmarking  # the editable install of this checkout
from mmcv.ops import batched_nms  # compiled ops present
print('[install] ok: torch', torch.__version__, 'torchvision', torchvision.__version__, 'mmcv', mmcv.__version__,
      'mmengine', mmengine.__version__, 'mmdet', mmdet.__version__, 'mmseg', mmseg.__version__,
      'mmpretrain', mmpretrain.__version__)
PY
echo "$want" > "$STAMP"
log "done"
