#!/usr/bin/env bash
# Chromium and its WebDriver from Debian's packages, for the console's browser test
# (tests/airflow/test_console_browser.py). Idempotent: does nothing when Chromium is already installed.
# No browser download: Debian's `chromium` and `chromium-driver` only. Needs root (CI runs as root).
set -euo pipefail

if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    echo "chromium: already installed ($(/usr/bin/chromium --version 2>/dev/null || echo unknown version))"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver fonts-dejavu-core
echo "chromium: installed ($(/usr/bin/chromium --version 2>/dev/null || echo unknown version))"
