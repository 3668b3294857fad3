#!/usr/bin/env bash
# Redis from Debian's package, the Celery broker of the CeleryExecutor test
# (tests/airflow/test_celery_backfill.py). Idempotent: does nothing when redis-server is already installed.
# Only the binary is wanted: the test starts its own server (own port, own directory, no persistence) and
# stops it, so the package's system service is kept from starting. Needs root (CI runs as root).
set -euo pipefail

if [ -x /usr/bin/redis-server ]; then
    echo "redis-server: already installed ($(/usr/bin/redis-server --version | cut -d' ' -f3))"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

# Debian starts a package's service on install unless policy-rc.d says no (exit 101); deb-systemd-invoke
# asks it too. Containers usually have one already; otherwise one is put in place for the install only.
POLICY=/usr/sbin/policy-rc.d
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
    $SUDO chmod 755 "$POLICY"
    trap '$SUDO rm -f "$POLICY"' EXIT
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends redis-server
# Nor started at boot: nothing here uses a system Redis.
if command -v systemctl >/dev/null 2>&1; then
    $SUDO systemctl disable redis-server >/dev/null 2>&1 || true
fi
echo "redis-server: installed ($(/usr/bin/redis-server --version | cut -d' ' -f3))"
