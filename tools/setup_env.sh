#!/usr/bin/env bash
# Create .venv with the pinned OpenMMLab stack and vtseg in editable mode.
#
# Idempotent: when requirements.txt and pyproject.toml are unchanged since the last
# successful run and the environment still imports, it returns in seconds. The first run
# compiles mmcv's ops from source (13 to 30 minutes on 2 cores); pip caches the wheel, so
# rebuilding the environment later on the same machine takes about a minute.
#
# Environment: PYTHON (interpreter for the venv, default python3.11 or python3),
# MAX_JOBS (compile jobs for mmcv, default: number of cores). Portable to macOS's bash 3.2
# and BSD tools.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
STAMP="$VENV/.setup-stamp"
# vtseg/csrc and setup.py: the compiled extension vtseg._C is rebuilt when they change.
# (hashed by Python: sha256sum is GNU coreutils, which macOS does not have)
want=$(cat requirements.txt pyproject.toml setup.py vtseg/csrc/* \
    | "$PY" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]] \
    && "$VENV/bin/python" -c "import vtseg, vtseg._C, mmcv.ops" 2>/dev/null; then
    echo "[setup] environment up to date ($VENV)"
    exit 0
fi

t0=$(date +%s)
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "[setup] creating $VENV with $PY"
    "$PY" -m venv "$VENV"
fi
pip() {
    # Some machines' pip configuration names local package folders that may not exist; pip
    # warns about each for every package. Those warnings are noise here.
    "$VENV/bin/python" -m pip --disable-pip-version-check "$@" \
        2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
}

# setuptools<82 still ships pkg_resources, which mmcv's setup.py and mmengine's
# `mmseg::` config lookup import; >=77 is what torch 2.13 declares.
pip install -q "setuptools>=77,<82" wheel
pin() { grep -E "^$1==" requirements.txt; }
echo "[setup] installing $(pin torch) and $(pin mmengine)"
pip install -q "$(pin torch)" "$(pin mmengine)"
if ! "$VENV/bin/python" -c "import mmcv.ops" 2>/dev/null; then
    echo "[setup] installing $(pin mmcv) with compiled ops (first time on a machine: 13-30 min)"
    # --no-build-isolation: build against the torch installed above instead of letting pip
    # fetch another (CUDA) torch into a throw-away build environment.
    MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(getconf _NPROCESSORS_ONLN)}" \
        pip install -q --no-build-isolation "$(pin mmcv)"
fi
echo "[setup] installing mmsegmentation and the remaining requirements"
pip install -q -r requirements.txt
# deploy: onnx and onnxruntime, so that the test suite runs the ONNX export tests.
# --no-build-isolation: vtseg._C (the fused CPU kernels) is compiled against this torch.
echo "[setup] installing vtseg and compiling its CPU kernels (vtseg._C, about a minute)"
# setup.py builds vtseg._C as optional (a user's install works without it); here it must be.
VTSEG_BUILD_EXT=required pip install -q --no-build-isolation -e ".[dev,deploy]"
"$VENV/bin/python" -c "import vtseg, mmcv.ops, mmseg; print('[setup] vtseg', vtseg.__version__, '| mmseg', mmseg.__version__)"
echo "$want" > "$STAMP"
echo "[setup] done in $(( $(date +%s) - t0 )) s"
