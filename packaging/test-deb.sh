#!/usr/bin/env bash
# Installs the .deb on this machine, starts the installed app under Xvfb with a local sandbox
# created by the installed CLI, and takes a screenshot of the main window.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/target}"
deb=$(ls -t "$CARGO_TARGET_DIR"/debug/bundle/deb/*.deb | head -1)
apt-get install -y -q "$deb" >/dev/null
dpkg -s porthole | grep -E '^(Status|Version|Depends)'
export PORTHOLE_HOME; PORTHOLE_HOME=$(mktemp -d)
/usr/bin/porthole machine create --name deb-test --network loopback --json | grep -E '"(name|status)"'
Xvfb :87 -screen 0 1440x900x24 -nolisten tcp >/dev/null 2>&1 & xvfb=$!
trap '/usr/bin/porthole machine destroy deb-test >/dev/null 2>&1 || true; kill $xvfb $app 2>/dev/null || true' EXIT
sleep 1
DISPLAY=:87 NO_AT_BRIDGE=1 dbus-run-session -- /usr/bin/porthole-app >/tmp/porthole-app-deb.log 2>&1 & app=$!
for _ in $(seq 60); do DISPLAY=:87 xdotool search --name '^Porthole$' >/dev/null 2>&1 && break; sleep 0.5; done
DISPLAY=:87 xdotool search --name '^Porthole$' >/dev/null || { echo "no window titled Porthole"; exit 1; }
sleep 4
ffmpeg -v error -y -f x11grab -video_size 1440x900 -i :87 -frames:v 1 "${1:-/tmp/porthole-deb.png}"
echo "window 'Porthole' is up; screenshot: ${1:-/tmp/porthole-deb.png}"
