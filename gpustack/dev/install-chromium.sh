#!/usr/bin/env bash
# Installs Debian's headless Chromium (for the web-UI screenshot test), once.
set -euo pipefail
if command -v chromium-headless-shell >/dev/null 2>&1 || [ -x /usr/lib/chromium/chromium-headless-shell ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "install-chromium: chromium-headless-shell is missing; run as root or: apt-get install chromium-headless-shell" >&2
    exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium-headless-shell >/dev/null
