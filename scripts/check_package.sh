#!/usr/bin/env bash
# The packaging check (CI runs it after the tests): build the sdist and the wheel (the wheel from
# the sdist, so a file missing from the sdist fails here), `twine check` them, look inside both,
# install the wheel (with its [trackers] extra) into a fresh venv and run `jaxlm --help` and the main
# job briefly from outside the repository, logging to TensorBoard, W&B (offline) and MLflow (a local
# store), with the config taken from the sdist (configs/ is not in the wheel).
#
# Everything happens in a temporary folder; the working tree is only read. Usage:
#   scripts/check_package.sh            (KEEP=1 keeps the temporary folder for a look)
# Needs: .venv with `build` and `twine` (the dev extra), a package index for the fresh venv's
# dependencies (pip's configured index; its cache makes reruns fast), and the shared data
# ($JAXLM_DATA, else ../shared/data) for the main job.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PY:-$REPO/.venv/bin/python}
DATA=${JAXLM_DATA:-$REPO/../shared/data}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/jaxlm-package.XXXXXX")
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$TMP"' EXIT
T0=$SECONDS
step() { echo "check_package: [$((SECONDS - T0))s] $*"; }
fail() { echo "check_package: FAILED: $*" >&2; exit 1; }

step "copying the tracked and new (not ignored) files to $TMP/src"
mkdir -p "$TMP/src"
git ls-files -z --cached --others --exclude-standard | "$PY" -c '
import os, shutil, sys
for name in sys.stdin.buffer.read().decode().split("\0"):
    if os.path.isfile(name):  # (a tracked file deleted in the working tree is skipped)
        os.makedirs(os.path.join(sys.argv[1], os.path.dirname(name)), exist_ok=True)
        shutil.copy2(name, os.path.join(sys.argv[1], name))
' "$TMP/src"

step "python -m build (sdist, then the wheel from the sdist)"
"$PY" -m build --outdir "$TMP/dist" "$TMP/src" > "$TMP/build.log" 2>&1 \
    || { tail -30 "$TMP/build.log"; fail "python -m build"; }
SDIST=$(ls "$TMP"/dist/jaxlm-*.tar.gz)
WHEEL=$(ls "$TMP"/dist/jaxlm-*.whl)

step "twine check --strict"
"$PY" -m twine check --strict "$SDIST" "$WHEEL"

step "contents and metadata"
"$PY" - "$SDIST" "$WHEEL" <<'EOF'
import sys, tarfile, zipfile
sdist, wheel = sys.argv[1], sys.argv[2]
names = {n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n}
for need in ("README.md", "LICENSE", "pyproject.toml", "configs/shakespeare_char.yaml",
             "jaxlm/py.typed", "jaxlm/cli.py", "jaxlm/train/trackers.py", "docs/cli.md"):
    assert need in names, f"the sdist lacks {need}"
z = zipfile.ZipFile(wheel)
files = set(z.namelist())
for need in ("jaxlm/py.typed", "jaxlm/cli.py", "jaxlm/train/trackers.py"):
    assert need in files, f"the wheel lacks {need}"
assert not any(n.startswith(("tests/", "configs/", "scripts/")) for n in files), "stray files"
meta = z.read(next(n for n in files if n.endswith(".dist-info/METADATA"))).decode()
for need in ("License-Expression: Apache-2.0", "Description-Content-Type: text/markdown",
             "Provides-Extra: trackers", "language models"):
    assert need in meta, f"METADATA lacks {need!r}"
entry_points = z.read(next(n for n in files if n.endswith("entry_points.txt"))).decode()
assert "jaxlm = jaxlm.cli:program" in entry_points, f"the console script is not cli:program: {entry_points}"
print(f"sdist: {len(names)} files; wheel: {len(files)} files")
EOF

step "a fresh venv with the wheel and its [trackers] extra installed (dependencies from pip's index and cache; no .pyc compiling)"
"$PY" -c 'import sys; print(sys._base_executable)' > "$TMP/base_python"
"$(cat "$TMP/base_python")" -m venv "$TMP/venv"
"$TMP/venv/bin/python" -m pip install -q --no-compile "$WHEEL[trackers]" > "$TMP/pip.log" 2>&1 \
    || { tail -30 "$TMP/pip.log"; fail "pip install of the wheel"; }

step "jaxlm --help and the main job (20 steps), from outside the repository"
mkdir -p "$TMP/work" && cd "$TMP/work"
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
"$TMP/venv/bin/python" -c "import jaxlm, pathlib; p = pathlib.Path(jaxlm.__file__).parent; \
assert str(p).startswith('$TMP/venv'), p; assert (p / 'py.typed').is_file()"
"$TMP/venv/bin/jaxlm" --help > help.txt && grep -q pretrain help.txt || fail "jaxlm --help"
tar xzf "$SDIST" -C "$TMP" && CONFIGS=$(ls -d "$TMP"/jaxlm-*/configs)
JAXLM_DATA="$DATA" WANDB_MODE=offline WANDB_SILENT=true "$TMP/venv/bin/jaxlm" pretrain \
    --config "$CONFIGS/shakespeare_char.yaml" --run runs/check --quiet --set train.steps=20 \
    --set train.eval_every=10 --set train.log_every=10 --set train.checkpoint_every=20 \
    --set train.eval_batches=2 --set 'logging.trackers=[tensorboard,wandb,mlflow]' \
    || fail "jaxlm pretrain from the wheel"
"$TMP/venv/bin/python" -c "import json; s = json.load(open('runs/check/summary.json')); \
assert s['step'] == 20 and s['val']['loss'] > 0, s; print('summary: step', s['step'], \
'val loss', round(s['val']['loss'], 3))"
ls runs/check/trackers/wandb/offline-run-*/run-*.wandb runs/check/trackers/mlruns > /dev/null \
    || fail "the W&B (offline) and MLflow (local store) files of the run"
step "OK"
