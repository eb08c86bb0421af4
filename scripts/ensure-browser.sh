#!/usr/bin/env bash
# Make sure the headless browser of the real-device test is there: Debian's chromium and
# chromium-driver, installed with apt when missing and apt is usable (root, or
# passwordless sudo). Otherwise explain the fix. Does nothing when both are installed.
set -euo pipefail
[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] && exit 0
if command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && apt-get install -y -qq chromium chromium-driver && exit 0
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo apt-get update -qq && sudo apt-get install -y -qq chromium chromium-driver && exit 0
  fi
fi
echo "Chromium or chromedriver not found in /usr/bin (tests/test_real_devices.py needs them)." >&2
echo "Fix: 'apt-get install -y chromium chromium-driver' (as root)." >&2
exit 1
