#!/usr/bin/env bash
# The main job: the desktop app on a local sandbox machine with the scripted demo agent.
#
# Builds the agent, the CLI, the UI and the app, creates (or restarts) the sandbox `demo` from
# packaging/demo/.porthole/environment.json, and starts the app. With no display it runs the
# app on an Xvfb display of its own and prints the agent's /viewer URL for any browser.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
bash packaging/install-deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/target}"
(cd ui && npm ci --no-audit --no-fund --loglevel=error && npm run build)
cargo build -p porthole-agent -p porthole-cli -p porthole-app
bin="$CARGO_TARGET_DIR/debug"
export PORTHOLE_AGENT_BIN="$bin/porthole-agent"
porthole="$bin/porthole"

if "$porthole" machine list --json | grep -q '"name": "demo"'; then
  "$porthole" machine start demo >/dev/null
else
  # No --browser: the demo agent opens its own kiosk Chromium on the todo app.
  "$porthole" machine create --name demo --env packaging/demo/.porthole/environment.json
fi
url=$("$porthole" machine list --json | python3 -c 'import json,sys; print([m for m in json.load(sys.stdin) if m["name"]=="demo"][0]["agent_url"])')
token=$("$porthole" machine token demo)
echo
echo "demo machine is up; the demo agent is clicking through the todo app."
echo "watch and take over in any browser: $url/viewer#token=$token"
echo

if [ -z "${DISPLAY:-}" ]; then
  export DISPLAY=:89
  Xvfb "$DISPLAY" -screen 0 1440x900x24 -nolisten tcp >/dev/null 2>&1 &
  xvfb=$!
  trap 'kill $xvfb 2>/dev/null' EXIT
  sleep 1
  echo "no display: the app runs on Xvfb $DISPLAY (screenshot: import -display $DISPLAY -window root app.png)"
fi
echo "starting the app (close its window or press Ctrl-C to stop; 'porthole machine stop demo' stops the machine)"
exec "$bin/porthole-app"
