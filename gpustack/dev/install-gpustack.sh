#!/usr/bin/env bash
# Installs what the GPUStack integration tests need, once (stamp files):
#   - PostgreSQL 15 from Debian (GPUStack 2.3.0 needs a real PostgreSQL),
#   - GPUStack 2.3.0 in its own virtual environment (its dependencies clash
#     with the pinned SGLang stack in .venv).
# Usage: gpustack/dev/install-gpustack.sh [VENV_DIR]   (default .cache/gpustack-venv)
set -euo pipefail
cd "$(dirname "$0")/../.."

GPUSTACK_VERSION="2.3.0"
VENV="${1:-.cache/gpustack-venv}"
CONSTRAINTS="gpustack/dev/gpustack-constraints.txt"
# The stamp names the constraints' hash: a changed pin reinstalls.
STAMP="$VENV/.gpustack-${GPUSTACK_VERSION}-$(sha256sum "$CONSTRAINTS" | cut -c1-12)-installed"
PYTHON="${GPUSTACK_PYTHON:-python3}"

if ! command -v /usr/lib/postgresql/15/bin/initdb >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
        echo "install-gpustack: PostgreSQL 15 is missing; run as root or: apt-get install postgresql-15" >&2
        exit 1
    fi
    echo "install-gpustack: installing Debian's postgresql-15" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-15 >/dev/null
fi

if [ ! -f "$STAMP" ]; then
    echo "install-gpustack: installing gpustack==${GPUSTACK_VERSION} into $VENV (once)" >&2
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c "$CONSTRAINTS" "gpustack==${GPUSTACK_VERSION}"
    touch "$STAMP"
fi
