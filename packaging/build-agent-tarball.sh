#!/usr/bin/env bash
# Packs the guest agent with everything install.sh needs into one tarball, for hosts without
# the .deb and for cloud-init (packaging/agent/cloud-init.yaml):
#   porthole-agent-VERSION-ARCH-linux-FLAVOUR/{porthole-agent, install.sh, *.service,
#       cloud-init.yaml, render-user-data.sh, LICENSE, LICENSES.md, README.md}
# plus a .sha256 beside it. From a release build that already exists:
#
#   cargo build --release --locked -p porthole-agent
#   packaging/build-agent-tarball.sh [--flavour debian12] [--out DIR] [--target TRIPLE]
#
# DIR defaults to <target-dir>/dist.
#
# FLAVOUR names the distribution whose FFmpeg the binary links (debian12, ubuntu24.04, ...);
# by default it is read from /etc/os-release. Prints the tarball's path.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

flavour="" out="" triple=""
while [ $# -gt 0 ]; do
  case "$1" in
    --flavour) flavour="${2:?}"; shift ;;
    --out) out="${2:?}"; shift ;;
    --target) triple="${2:?}"; shift ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "build-agent-tarball: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$flavour" ]; then
  # shellcheck disable=SC1091 # the running system's file
  flavour="$(. /etc/os-release && echo "${ID}${VERSION_ID}")"
fi

meta="$(cargo metadata --no-deps --format-version 1)"
target_dir="$(sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p' <<<"$meta")"
version="$(grep -o '"name":"porthole-agent","version":"[^"]*"' <<<"$meta" | sed 's/.*"version":"//; s/"$//')"
[ -n "$version" ] || { echo "build-agent-tarball: cannot read porthole-agent's version" >&2; exit 1; }
bin="$target_dir/${triple:+$triple/}release/porthole-agent"
out="${out:-$target_dir/dist}"
[ -x "$bin" ] || { echo "build-agent-tarball: $bin not found; cargo build --release --locked -p porthole-agent first" >&2; exit 1; }
case "${triple:-$(uname -m)}" in
  x86_64*) arch=x86_64 ;;
  aarch64*|arm64*) arch=aarch64 ;;
  *) arch="${triple%%-*}"; arch="${arch:-$(uname -m)}" ;;
esac

name="porthole-agent-$version-$arch-linux-$flavour"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/$name" "$out"
install -m 0755 "$bin" "$stage/$name/porthole-agent"
if command -v strip >/dev/null 2>&1 && [ -z "$triple" ]; then strip "$stage/$name/porthole-agent"; fi
install -m 0755 packaging/agent/install.sh packaging/agent/render-user-data.sh "$stage/$name/"
install -m 0644 packaging/agent/porthole-agent.service packaging/agent/porthole-xvfb.service \
  packaging/agent/porthole-openbox.service packaging/agent/cloud-init.yaml \
  LICENSE packaging/LICENSES.md "$stage/$name/"
install -m 0644 packaging/README.md "$stage/$name/README.md"
tar -C "$stage" --owner=0 --group=0 --numeric-owner -czf "$out/$name.tar.gz" "$name"
(cd "$out" && sha256sum "$name.tar.gz" >"$name.tar.gz.sha256")
echo "$out/$name.tar.gz"
