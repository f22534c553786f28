#!/usr/bin/env bash
# Packages the guest agent as a .deb with cargo-deb from a release build that already exists
# (it never compiles the agent itself: --no-build).
#
#   cargo build --release --locked -p porthole-agent
#   packaging/build-agent-deb.sh                          # Debian 12 package
#   packaging/build-agent-deb.sh --variant ubuntu2404     # on Ubuntu 24.04 (needs dpkg-dev)
#   packaging/build-agent-deb.sh --output dist/x.deb      # any other cargo-deb flag passes through
#
# The package metadata (dependencies, assets, maintainer scripts) is [package.metadata.deb] in
# guest-agent/Cargo.toml. The .deb lands in <target-dir>/debian/ unless --output says otherwise.
# cargo-deb is installed with `cargo install cargo-deb --locked` the first time (a few CPU-minutes).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! cargo deb --version >/dev/null 2>&1; then
  echo "build-agent-deb: installing cargo-deb"
  cargo install cargo-deb --locked
fi

# cargo-deb would package whatever stale file sits there, or fail late: check first.
target_dir="$(cargo metadata --no-deps --format-version 1 | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
triple=""
prev=""
for a in "$@"; do
  case "$a" in --target=*) triple="${a#--target=}" ;; esac
  if [ "$prev" = --target ]; then triple="$a"; fi
  prev="$a"
done
bin="$target_dir/${triple:+$triple/}release/porthole-agent"
if [ ! -x "$bin" ]; then
  echo "build-agent-deb: $bin not found; build it first: cargo build --release --locked -p porthole-agent${triple:+ --target $triple}" >&2
  exit 1
fi

cargo deb -p porthole-agent --no-build "$@"
