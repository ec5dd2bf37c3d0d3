#!/usr/bin/env bash
# Fresh-machine test run: venv, package with every extra, Debian's Chromium for the browser-agent test, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[all,test]'
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
  else
    echo "chromium is missing: install Debian's chromium package (the GUI-agent test drives it)" >&2
  fi
fi
exec .venv/bin/python -m pytest -q "$@"
