#!/usr/bin/env bash
# Builds the desktop app's .deb and .rpm here (debug by default: `--release` for a release),
# with the CLI and the guest agent inside, so the installed app can run local sandboxes.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/target}"
profile=debug; flag=--debug
if [ "${1:-}" = "--release" ]; then profile=release; flag=; fi
cargo build $([ $profile = release ] && echo --release) -p porthole-cli -p porthole-agent
mkdir -p src-tauri/bin
cp "$CARGO_TARGET_DIR/$profile/porthole" "$CARGO_TARGET_DIR/$profile/porthole-agent" src-tauri/bin/
(cd ui && npm ci --no-audit --no-fund --loglevel=error)
(cd src-tauri && npx --yes @tauri-apps/cli@2.12.5 build $flag --bundles deb,rpm)
ls -1 "$CARGO_TARGET_DIR/$profile/bundle/deb/"*.deb "$CARGO_TARGET_DIR/$profile/bundle/rpm/"*.rpm
