#!/usr/bin/env bash
# Fills in cloud-init.yaml (beside this script) and prints the user-data.
#
#   render-user-data.sh --payload porthole-agent-...tar.gz [options] > user-data   # option A
#   render-user-data.sh --url https://... --sha256 HEX [options] > user-data        # option B
#
# Options:
#   --install-args "..."  options for install.sh (default "--udp-port 7301")
#   --token TOKEN         preset the agent's token (letters and digits; else a random one)
# With --payload the SHA-256 of the payload is filled in too, and checked on the instance.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
template="$here/cloud-init.yaml"
placeholder="UE9SVEhPTEVfUEFZTE9BRF9QTEFDRUhPTERFUg=="
payload="" url="" sha="" install_args="--udp-port 7301" token=""

die() { echo "render-user-data: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
  case "$1" in
    --payload) payload="${2:?}"; shift ;;
    --url) url="${2:?}"; shift ;;
    --sha256) sha="${2:?}"; shift ;;
    --install-args) install_args="${2?}"; shift ;;
    --token) token="${2:?}"; shift ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
[ -n "$payload" ] || [ -n "$url" ] || die "give --payload FILE or --url URL --sha256 HEX"
[ -z "$payload" ] || [ -z "$url" ] || die "--payload and --url exclude each other"
if [ -n "$payload" ]; then
  [ -f "$payload" ] || die "$payload: no such file"
  sha="$(sha256sum "$payload" | cut -d' ' -f1)"
fi
[ -z "$url" ] || [ -n "$sha" ] || die "--url needs --sha256 (sha256sum of the payload)"
[ -z "$sha" ] || [[ "$sha" =~ ^[0-9a-fA-F]{64}$ ]] || die "--sha256: expected 64 hex digits"
# Values land inside double quotes in a shell file: keep them free of quoting characters.
for v in "$url" "$install_args" "$token"; do
  case "$v" in *'"'*|*'$'*|*'`'*|*"\\"*|*$'\n'*) die "values may not contain \" \$ \` \\ or newlines: $v" ;; esac
done
[ -z "$token" ] || [[ "$token" =~ ^[A-Za-z0-9._~-]{16,}$ ]] || die "--token: at least 16 letters, digits or ._~-"

b64="$(mktemp)"
trap 'rm -f "$b64"' EXIT
if [ -n "$payload" ]; then base64 -w0 "$payload" >"$b64"; else printf '%s' "$placeholder" >"$b64"; fi

awk -v b64file="$b64" -v placeholder="$placeholder" \
    -v url="$url" -v sha="$sha" -v args="$install_args" -v token="$token" '
  $0 == "    content: " placeholder {
    printf "    content: "
    while ((getline chunk < b64file) > 0) printf "%s", chunk
    printf "\n"
    next
  }
  $0 == "      PORTHOLE_PAYLOAD_URL=\"\"" { print "      PORTHOLE_PAYLOAD_URL=\"" url "\""; next }
  $0 == "      PORTHOLE_PAYLOAD_SHA256=\"\"" { print "      PORTHOLE_PAYLOAD_SHA256=\"" sha "\""; next }
  /^      PORTHOLE_INSTALL_ARGS=/ { print "      PORTHOLE_INSTALL_ARGS=\"" args "\""; next }
  $0 == "      PORTHOLE_TOKEN=\"\"" { print "      PORTHOLE_TOKEN=\"" token "\""; next }
  { print }
' "$template"
