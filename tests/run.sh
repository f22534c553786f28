#!/usr/bin/env bash
# The test command: unit and integration tests (cargo), then the end-to-end tests that drive the
# real agent on a real Xvfb display with Debian's Chromium as an independent WebRTC peer.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
bash packaging/install-deps.sh >/dev/null
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/target}"
export PORTHOLE_AGENT_BIN="$CARGO_TARGET_DIR/debug/porthole-agent"

start=$(date +%s)
# The app embeds the UI at compile time: build it first.
(cd ui && npm run build)
cargo build --workspace --locked --all-targets
echo "tests/run.sh: build took $(( $(date +%s) - start )) s"
cargo test --workspace --locked
# `cargo test` regenerates the UI's wire types from crates/proto (ts-rs): the committed ones
# must be what it wrote, so the UI can never drift from the Rust types.
if git rev-parse --git-dir >/dev/null 2>&1 && [ -n "$(git status --porcelain -- ui/src/backend/bindings)" ]; then
  echo "tests/run.sh: ui/src/backend/bindings is stale; commit what cargo test regenerated:" >&2
  git status --short -- ui/src/backend/bindings >&2
  exit 1
fi
(cd ui && npm test)
# `npm test` runs each file with --test-force-exit: a test cancelled by its timeout leaves its
# children (Xvfb, the agent) holding the file's event loop open, and without it the runner
# waits on that file forever (a CI run lost its 90 minutes that way).
(cd tests/e2e && npm test)
echo "tests/run.sh: all tests took $(( $(date +%s) - start )) s"
