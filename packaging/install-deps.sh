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
  xvfb tigervnc-standalone-server x11-utils x11-xserver-utils xdotool openbox xterm xclip
  # browser peer + browser in the guest
  chromium chromium-driver fonts-dejavu-core
  # environments and sandboxes: bubblewrap, a private network for every machine (slirp4netns
  # for outbound traffic, nftables for the rules that keep host addresses out of reach),
  # setpriv/nsenter (util-linux); python3 is what the isolation tests attack with
  tmux bubblewrap iproute2 procps psmisc slirp4netns nftables util-linux python3
  # machines from a Dockerfile or an image (podman builds; uidmap for rootless builds);
  # busybox-static is the images test's base root filesystem (no registry is reachable)
  podman uidmap busybox-static
  # a TURN server for the relay test (coturn)
  coturn
  # QEMU VMs and their guest image (packaging/guest-image/build.sh)
  qemu-system-x86 qemu-utils debootstrap e2fsprogs
  # desktop app (Tauri v2 on WebKitGTK 4.1) and H.264 decoding in WebKitGTK
  libwebkit2gtk-4.1-dev libgtk-3-dev libayatana-appindicator3-dev librsvg2-dev libsoup-3.0-dev
  webkit2gtk-driver gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-libav
  # SQLite for the app's store (sqlx bundles none of it; the CLI tools help debugging)
  sqlite3 openssl
  # the vault key in the OS keychain (Secret Service) and its test: a keyring daemon, secret-tool
  libdbus-1-dev gnome-keyring libsecret-tools dbus
)

# Node for the UI and the browser tests: keep one that is already there (nodesource ships npm inside
# its nodejs package and conflicts with Debian's npm).
if ! command -v npm >/dev/null 2>&1; then PKGS+=(nodejs npm); fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  # `apt-get update` only when something is missing, so a second run is instant.
  $SUDO apt-get update -q
  # Skip what this distribution does not package (Ubuntu ships Chromium as a snap: install it
  # with `snap install chromium` for the browser tests), rather than failing the whole install.
  available=()
  for p in "${missing[@]}"; do
    if apt-cache show "$p" >/dev/null 2>&1; then available+=("$p"); else echo "install-deps: $p is not packaged here; skipping" >&2; fi
  done
  echo "install-deps: installing ${#available[@]} packages: ${available[*]}"
  $SUDO apt-get install -y -q --no-install-recommends "${available[@]}"
else
  echo "install-deps: all ${#PKGS[@]} system packages present"
fi
# A newer qemu-utils installed outside apt's sources is removed when Debian's qemu-system-x86
# comes in (their versions must match): put Debian's back so qemu-img exists.
if ! command -v qemu-img >/dev/null 2>&1; then $SUDO apt-get install -y -q --no-install-recommends qemu-utils; fi

# slirp4netns opens /dev/net/tun for an ordinary user's machines; distributions make it 0666
# (udev), some VM images leave it 0600, which refuses every non-root sandbox.
if [ -c /dev/net/tun ] && [ "$(stat -c %a /dev/net/tun)" != "666" ]; then
  echo "install-deps: /dev/net/tun is mode $(stat -c %a /dev/net/tun); making it 0666 as distributions do (slirp4netns needs it for ordinary users)"
  $SUDO chmod 0666 /dev/net/tun
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: cargo not found. Install Rust with rustup (https://rustup.rs), then rerun." >&2
  exit 1
fi

# tauri-driver: the WebDriver server in front of WebKitWebDriver for the desktop app's end-to-end
# test (tests/e2e/app.test.mjs). Built from crates.io into ~/.cargo/bin (a few minutes, once), in
# cargo's own temporary target dir.
if ! command -v tauri-driver >/dev/null 2>&1; then
  echo "install-deps: cargo install tauri-driver --locked"
  env -u CARGO_TARGET_DIR cargo install tauri-driver --locked --version '^2'
fi

# Node packages for the browser tests (playwright-core drives Debian's Chromium; no browser download).
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
for d in ui tests/e2e; do
  if [ -f "$here/$d/package-lock.json" ]; then
    # Skip when node_modules already matches the lock file (a second run is instant).
    if [ ! -f "$here/$d/node_modules/.package-lock.json" ] || ! cmp -s <(sed 1,3d "$here/$d/package-lock.json" | md5sum) "$here/$d/node_modules/.porthole-lock.md5" 2>/dev/null; then
      (cd "$here/$d" && npm ci --no-audit --no-fund --loglevel=error)
      sed 1,3d "$here/$d/package-lock.json" | md5sum > "$here/$d/node_modules/.porthole-lock.md5"
    fi
  fi
done
echo "install-deps: done"
