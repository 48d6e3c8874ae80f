#!/bin/sh
# The page test drives Debian's chromium through Playwright, which cannot download its
# own browser offline. Installs it when it is missing (as root, or with sudo).
set -e
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "tests/install-browser.sh: no chromium and no apt-get: install a Chromium build as 'chromium' on PATH" >&2
  exit 1
fi
run() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
export DEBIAN_FRONTEND=noninteractive
# a fresh machine may have no package lists yet
run apt-get install -y -q chromium >/dev/null 2>&1 || { run apt-get update -q >/dev/null && run apt-get install -y -q chromium >/dev/null; }
command -v chromium >/dev/null 2>&1
