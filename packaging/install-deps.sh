#!/usr/bin/env bash
# Installs every system package Porthole needs to build, test and run on Debian 12 / Ubuntu 22.04+.
# Idempotent: packages already present are skipped by apt; node modules come from package-lock.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

PKGS=(
  # build
  build-essential pkg-config clang libclang-dev git curl ca-certificates
  # encoder (ffmpeg-next links Debian's FFmpeg; libx264 comes with libavcodec)
  libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libavfilter-dev
  libavdevice-dev libswresample-dev ffmpeg
  # X: capture (MIT-SHM, Damage, XFixes via x11rb/xcb), input (XTEST), a desktop to watch
  libxcb1-dev libxcb-shm0-dev libxcb-damage0-dev libxcb-xfixes0-dev libxcb-xtest0-dev
  libxcb-randr0-dev libxdo-dev libxkbcommon-dev libx11-dev libxi-dev libxtst-dev
  xvfb x11-utils x11-xserver-utils xdotool openbox xterm
  # browser peer + browser in the guest
  chromium chromium-driver fonts-dejavu-core
  # environments and sandboxes
  tmux bubblewrap iproute2 procps psmisc
  # desktop app (Tauri v2 on WebKitGTK 4.1) and H.264 decoding in WebKitGTK
  libwebkit2gtk-4.1-dev libgtk-3-dev libayatana-appindicator3-dev librsvg2-dev libsoup-3.0-dev
  webkit2gtk-driver gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-libav
  # SQLite for the app's store (sqlx bundles none of it; the CLI tools help debugging)
  sqlite3
)

# Node for the UI and the browser tests: keep one that is already there (nodesource ships npm inside
# its nodejs package and conflicts with Debian's npm).
if ! command -v npm >/dev/null 2>&1; then PKGS+=(nodejs npm); fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-deps: installing ${#missing[@]} packages: ${missing[*]}"
  # `apt-get update` only when something is missing, so a second run is instant.
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "install-deps: all ${#PKGS[@]} system packages present"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: cargo not found. Install Rust with rustup (https://rustup.rs), then rerun." >&2
  exit 1
fi

# Node packages for the browser tests (playwright-core drives Debian's Chromium; no browser download).
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -f "$here/tests/e2e/package.json" ]; then
  (cd "$here/tests/e2e" && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "install-deps: done"
