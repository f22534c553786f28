#!/usr/bin/env bash
# Installs what the benchmarks in tests/bench/ need beyond packaging/install-deps.sh: the peers
# they compare against (x11vnc + websockify + noVNC from Debian, Selkies from PyPI in a venv) and
# the reference tools (xdotool, ffmpeg). Benchmarks are not part of CI; run this by hand.
# Idempotent: present packages are skipped, the venv is reused, pip only runs when selkies is
# missing (or PORTHOLE_BENCH_UPGRADE=1).
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

PKGS=(x11vnc novnc websockify xdotool ffmpeg xvfb chromium python3-venv python3-pip)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-bench-deps: installing ${#missing[@]} packages: ${missing[*]}"
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "install-bench-deps: all ${#PKGS[@]} system packages present"
fi

# Selkies (PyPI) in its own venv, built on Debian's python3 so system libraries line up.
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/porthole-bench"
VENV="$CACHE/venv"
PY=/usr/bin/python3
[ -x "$PY" ] || PY="$(command -v python3)"
if [ ! -x "$VENV/bin/python" ]; then
  echo "install-bench-deps: creating venv $VENV ($PY)"
  mkdir -p "$CACHE"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
if [ "${PORTHOLE_BENCH_UPGRADE:-0}" = "1" ] || ! "$VENV/bin/python" -m pip show -q selkies >/dev/null 2>&1; then
  echo "install-bench-deps: pip install selkies into $VENV"
  "$VENV/bin/python" -m pip install -q --upgrade selkies
else
  echo "install-bench-deps: selkies $("$VENV/bin/python" -m pip show selkies | sed -n 's/^Version: //p') present in $VENV"
fi

# Node modules: the benchmarks import playwright-core from tests/e2e/node_modules.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -f "$here/tests/e2e/package.json" ] && [ ! -d "$here/tests/e2e/node_modules/playwright-core" ]; then
  (cd "$here/tests/e2e" && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "install-bench-deps: done"
