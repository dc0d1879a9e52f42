#!/usr/bin/env sh
# Install the Debian `chromium` package for the UI browser tests (Playwright drives /usr/bin/chromium;
# we never download a browser build). Idempotent: does nothing when chromium is already there.
set -eu

if [ -x /usr/bin/chromium ]; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install_browser.sh: /usr/bin/chromium is missing and we are not root (no sudo)." >&2
        echo "Install it yourself: apt-get update && apt-get install -y chromium" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y chromium
test -x /usr/bin/chromium
