#!/usr/bin/env bash
# The browser the console's tests drive (e2e/tests/console.rs): Debian's chromium and
# its WebDriver, chromedriver, from the Debian archive only (no browser download).
# Idempotent; `.ci/run` calls it. Needs root (apt) the first time.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium chromium-driver >/dev/null
/usr/bin/chromium --version
