#!/usr/bin/env sh
# Installs the sglang-dspark wheel into the Python environment that runs SGLang,
# without replacing anything that environment already has: every installed
# package is pinned to its installed version (pip fails rather than swap the
# image's CUDA build of torch, flashinfer or sglang-kernel), then the plugin's
# entry point is loaded once as a smoke check.
# Used by docker/Dockerfile and, on CPU, by tests/docker/test_image_install.py.
# Usage: install-wheel.sh WHEEL [EXTRAS]     e.g. install-wheel.sh /dist/x.whl cuda
set -eu

WHEEL="$1"
EXTRAS="${2:-}"
PYTHON="${PYTHON:-python3}"
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT

# The environment as it is, less any earlier sglang-dspark install.
"$PYTHON" -m pip freeze --exclude-editable | grep -vi '^sglang[-_]dspark[=@ ]' > "$CONSTRAINTS" || true

TARGET="$WHEEL"
if [ -n "$EXTRAS" ]; then
    TARGET="sglang-dspark[$EXTRAS] @ file://$(realpath "$WHEEL")"
fi
"$PYTHON" -m pip install --no-cache-dir --disable-pip-version-check -c "$CONSTRAINTS" "$TARGET"

"$PYTHON" - <<'PY'
from importlib.metadata import entry_points

(ep,) = [e for e in entry_points(group="sglang.srt.plugins") if e.name == "dspark"]
ep.load()()
print(f"sglang-dspark plugin loaded: {ep.value}")
PY
