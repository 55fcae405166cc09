#!/usr/bin/env bash
# Install what tests/test_browser.py needs: Debian's chromium and chromedriver, and selenium in
# the project's virtual environment. Idempotent: anything already present is left alone.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$here/.venv/bin/python}"

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  echo "install_browser: present: $(chromium --version 2>/dev/null | head -1); $(chromedriver --version | head -1)"
else
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update
  $sudo apt-get install -y --no-install-recommends chromium chromium-driver
fi

if [ -x "$python" ]; then
  if "$python" -c "import selenium" >/dev/null 2>&1; then
    echo "install_browser: present: selenium $("$python" -c 'import selenium; print(selenium.__version__)')"
  else
    "$python" -m pip install "selenium>=4.20"
  fi
else
  echo "install_browser: no Python at $python (set PYTHON=...); selenium not checked" >&2
fi
