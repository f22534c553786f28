#!/usr/bin/env bash
# Turns a Debian or Ubuntu host (a VM, a cloud instance, a spare box) into a Porthole machine:
# runtime packages, the porthole-agent binary, a `porthole` system user, a bearer token, a
# self-signed TLS certificate, and systemd units for Xvfb :99, openbox and the agent.
#
#   sudo ./install.sh [PAYLOAD] [options]
#   sudo ./install.sh --uninstall [--keep-data]
#
# PAYLOAD is the porthole-agent binary or a porthole-agent .deb. Without one, the script uses a
# `porthole-agent` binary beside itself (the release tarball), else the one already installed.
#
# Options:
#   --binary PATH       install this binary as /usr/local/bin/porthole-agent
#   --deb PATH          install this .deb with apt (it brings its own dependencies and units)
#   --listen ADDR:PORT  where the agent listens (default 0.0.0.0:7300 with TLS, else
#                       127.0.0.1:7300: plain HTTP stays on loopback, reach it via an SSH tunnel)
#   --allow-plain-http  accept a non-loopback --listen without TLS (the token travels in clear)
#   --no-tls            do not pass the certificate to the agent even if it supports TLS
#   --host NAME|IP      extra name or address for the certificate and the printed URL (repeatable)
#   --public-ip IP      passed to the agent: IP advertised in ICE candidates (cloud 1:1 NAT)
#   --udp-port N        passed to the agent: one UDP port for all WebRTC media (one firewall rule)
#   --screen WxHxD      Xvfb screen (default 1280x800x24)
#   --regen-cert        replace the TLS certificate and key (a new fingerprint)
#   --skip-packages     do not install packages (the host already has them)
#   --no-start          install and enable, do not (re)start the services
#   --uninstall         stop and remove everything this script or the .deb installed
#   --keep-data         with --uninstall: keep /var/lib/porthole-agent (recordings)
#
# Idempotent: a second run changes nothing that is already right, keeps the token and the
# certificate (so the app's pin stays valid), and restarts the agent to pick up a new binary.
# Needs: root, apt, systemd (without a running systemd, e.g. while building an image, the units
# are installed and enabled but not started).
set -euo pipefail

readonly SVC_USER=porthole
readonly HOME_DIR=/var/lib/porthole
readonly DATA_DIR=/var/lib/porthole-agent
readonly CONF_DIR=/etc/porthole
readonly TOKEN_FILE=$CONF_DIR/token
readonly TLS_DIR=$CONF_DIR/tls
readonly TLS_CERT=$TLS_DIR/agent.crt
readonly TLS_KEY=$TLS_DIR/agent.key
readonly ENV_FILE=$CONF_DIR/agent.env
readonly LOCAL_BIN=/usr/local/bin/porthole-agent
readonly UNIT_DIR=/etc/systemd/system
readonly UNITS=(porthole-xvfb.service porthole-openbox.service porthole-agent.service)
readonly PORT_DEFAULT=7300

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

log() { printf 'porthole-install: %s\n' "$*"; }
warn() { printf 'porthole-install: warning: %s\n' "$*" >&2; }
die() { printf 'porthole-install: error: %s\n' "$*" >&2; exit 1; }

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

# ---------------------------------------------------------------------------------------------
# Arguments
payload="" payload_kind="" listen="" allow_plain=0 no_tls=0 public_ip="" udp_port=""
screen="1280x800x24" regen_cert=0 skip_packages=0 no_start=0 uninstall=0 keep_data=0
hosts=()
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) payload="${2:?--binary needs a path}"; payload_kind=binary; shift ;;
    --deb) payload="${2:?--deb needs a path}"; payload_kind=deb; shift ;;
    --listen) listen="${2:?--listen needs ADDR:PORT}"; shift ;;
    --allow-plain-http) allow_plain=1 ;;
    --no-tls) no_tls=1 ;;
    --host) hosts+=("${2:?--host needs a name or address}"); shift ;;
    --public-ip) public_ip="${2:?--public-ip needs an address}"; shift ;;
    --udp-port) udp_port="${2:?--udp-port needs a number}"; shift ;;
    --screen) screen="${2:?--screen needs WxHxD}"; shift ;;
    --regen-cert) regen_cert=1 ;;
    --skip-packages) skip_packages=1 ;;
    --no-start) no_start=1 ;;
    --uninstall) uninstall=1 ;;
    --keep-data) keep_data=1 ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *)
      [ -z "$payload" ] || die "more than one payload given ($payload, $1)"
      payload="$1"
      case "$1" in *.deb) payload_kind=deb ;; *) payload_kind=binary ;; esac ;;
  esac
  shift
done

[ "$(id -u)" -eq 0 ] || die "run as root (sudo $0 ...)"
command -v apt-get >/dev/null 2>&1 || die "apt-get not found: this script supports Debian and Ubuntu"
if [ -n "$payload" ]; then
  [ -f "$payload" ] || die "$payload: no such file"
  payload="$(cd "$(dirname "$payload")" && pwd)/$(basename "$payload")"
fi
[[ "$screen" =~ ^[0-9]+x[0-9]+x(8|16|24|32)$ ]] || die "--screen $screen: expected WxHxD, e.g. 1920x1080x24"
[ -z "$udp_port" ] || [[ "$udp_port" =~ ^[0-9]+$ ]] || die "--udp-port $udp_port: expected a number"
[ -z "$listen" ] || [[ "$listen" =~ ^(\[[0-9a-fA-F:.]+\]|[0-9.]+|[A-Za-z0-9.-]+):[0-9]+$ ]] ||
  die "--listen $listen: expected ADDR:PORT, e.g. 0.0.0.0:7300"

systemd_running() { [ -d /run/systemd/system ]; }

# ---------------------------------------------------------------------------------------------
# Uninstall
if [ "$uninstall" -eq 1 ]; then
  log "uninstalling"
  if systemd_running; then
    systemctl stop "${UNITS[@]}" 2>/dev/null || true
  fi
  systemctl disable "${UNITS[@]}" >/dev/null 2>&1 || true
  if dpkg-query -W -f='${Status}' porthole-agent 2>/dev/null | grep -q 'ok installed'; then
    log "removing the porthole-agent package"
    DEBIAN_FRONTEND=noninteractive apt-get purge -y -q porthole-agent
  fi
  for u in "${UNITS[@]}"; do rm -f "$UNIT_DIR/$u"; done
  rm -rf "$UNIT_DIR/porthole-agent.service.d"
  if systemd_running; then
    systemctl daemon-reload
    systemctl reset-failed "${UNITS[@]}" 2>/dev/null || true
  fi
  rm -f "$LOCAL_BIN"
  rm -rf "$CONF_DIR"
  if [ "$keep_data" -eq 1 ]; then
    log "keeping $DATA_DIR"
  else
    rm -rf "$DATA_DIR"
  fi
  if getent passwd "$SVC_USER" >/dev/null; then
    userdel "$SVC_USER" 2>/dev/null || warn "could not remove user $SVC_USER (processes still running as it?)"
  fi
  if getent group "$SVC_USER" >/dev/null; then groupdel "$SVC_USER" 2>/dev/null || true; fi
  rm -rf "$HOME_DIR"
  log "done. Packages installed as dependencies (xvfb, openbox, tmux, FFmpeg libraries) were left in place."
  exit 0
fi

# ---------------------------------------------------------------------------------------------
# Packages
export DEBIAN_FRONTEND=noninteractive
apt_updated=0
apt_update_once() {
  # stdout stays clean: callers may capture it.
  if [ "$apt_updated" -eq 0 ]; then apt-get update -q >&2; apt_updated=1; fi
}
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }
installable() {
  # apt-cache policy prints "Candidate: (none)" for names it knows but cannot install.
  apt-cache policy "$1" 2>/dev/null | grep -q 'Candidate: [^(]'
}
install_pkgs() {
  local missing=() p
  for p in "$@"; do installed "$p" || missing+=("$p"); done
  [ "${#missing[@]}" -gt 0 ] || return 0
  apt_update_once
  log "installing ${missing[*]}"
  apt-get install -y -q --no-install-recommends "${missing[@]}"
}
# The first of several package names (newest first) this distribution offers.
first_installable() {
  local p
  for p in "$@"; do
    if installed "$p" || { apt_update_once; installable "$p"; }; then echo "$p"; return 0; fi
  done
  return 1
}

# FFmpeg libraries by distribution, newest first: Debian 13 (61/59/8), Ubuntu 24.04 (60/58/7),
# Debian 12 (59/57/6), Ubuntu 22.04 (58/56/5). Used when no binary says which it links.
ffmpeg_fallback_pkgs() {
  local family
  for family in "libavcodec61 libavcodec60 libavcodec59 libavcodec58" \
                "libavformat61 libavformat60 libavformat59 libavformat58" \
                "libavutil59 libavutil58 libavutil57 libavutil56" \
                "libswscale8 libswscale7 libswscale6 libswscale5"; do
    # shellcheck disable=SC2086 # word splitting of the family list is intended
    first_installable $family || die "none of $family is available from apt on this host"
  done
}

# A missing shared library (soname) -> the Debian/Ubuntu package that ships it.
soname_pkg() {
  local so="$1" base ver
  base="${so%%.so.*}" ver="${so##*.so.}"
  case "$base" in
    libavcodec|libavformat|libavutil|libavfilter|libavdevice|libswscale|libswresample|libpostproc)
      echo "$base$ver $base${ver}t64" ;;
    libx264) echo "libx264-$ver" ;;
    libvpx) echo "libvpx$ver" ;;
    libX11) echo "libx11-6" ;;
    libxcb) echo "libxcb1" ;;
    libssl|libcrypto) if [ "$ver" = 3 ]; then echo "libssl3 libssl3t64"; else echo "libssl$ver"; fi ;;
    *) return 1 ;;
  esac
}

missing_sonames() { ldd "$1" 2>/dev/null | awk '/=> not found/ {print $1}'; }

# Installs what the binary links but the host lacks; fails with a clear message if the
# distribution does not have it (a binary built on Debian 12 needs FFmpeg 5.1's libavcodec59).
ensure_binary_libs() {
  local bin="$1" so cand pkg found
  local -a need=() unknown=() unavailable=()
  while read -r so; do
    [ -n "$so" ] || continue
    if cand="$(soname_pkg "$so")"; then
      found=""
      for pkg in $cand; do
        if installed "$pkg" || { apt_update_once; installable "$pkg"; }; then found="$pkg"; break; fi
      done
      if [ -n "$found" ]; then need+=("$found"); else unavailable+=("$so"); fi
    else
      unknown+=("$so")
    fi
  done < <(missing_sonames "$bin")
  if [ "${#unavailable[@]}" -gt 0 ]; then
    local distro
    distro="$(sed -n 's/^PRETTY_NAME=//p' /etc/os-release 2>/dev/null | tr -d '"')"
    die "$bin links ${unavailable[*]}, which this distribution does not ship (${distro:-unknown distribution}).
  Use the porthole-agent build for this distribution (release assets: debian12, ubuntu24.04),
  or build it here: packaging/install-deps.sh && cargo build --release -p porthole-agent"
  fi
  [ "${#need[@]}" -eq 0 ] || install_pkgs "${need[@]}"
  if [ "${#unknown[@]}" -gt 0 ]; then
    die "$bin needs ${unknown[*]}, which no installed package provides; install it and rerun"
  fi
  if [ -n "$(missing_sonames "$bin")" ]; then
    die "$bin still misses: $(missing_sonames "$bin" | tr '\n' ' ')"
  fi
}

if [ "$skip_packages" -eq 0 ]; then
  # Runtime: the virtual display, a window manager, tmux for environment terminals, openssl
  # for the certificate, fonts so apps render text, curl for the health check below.
  install_pkgs xvfb xauth openbox tmux openssl ca-certificates fonts-dejavu-core curl procps
fi

# ---------------------------------------------------------------------------------------------
# The binary
if [ -z "$payload" ]; then
  if [ -x "$here/porthole-agent" ]; then
    payload="$here/porthole-agent" payload_kind=binary
  fi
fi
case "$payload_kind" in
  deb)
    dpkg-deb --info "$payload" >/dev/null 2>&1 || die "$payload is not a .deb"
    apt_update_once
    log "installing $(basename "$payload")"
    # apt resolves the package's Depends (Debian 12 names for the default build).
    apt-get install -y -q --no-install-recommends "$payload" ||
      die "apt could not install $payload: is it the build for this distribution (debian12 vs ubuntu24.04)?"
    # A binary installed earlier by this script would shadow the package's on PATH.
    rm -f "$LOCAL_BIN"
    ;;
  binary)
    file_head="$(head -c 4 "$payload" | od -An -c | tr -d ' ')"
    [ "$file_head" = '177ELF' ] || die "$payload is not an executable (ELF) file"
    if ! cmp -s "$payload" "$LOCAL_BIN" 2>/dev/null; then
      log "installing $payload as $LOCAL_BIN"
      install -m 0755 -o root -g root "$payload" "$LOCAL_BIN.new"
      mv -f "$LOCAL_BIN.new" "$LOCAL_BIN"
    fi
    ;;
esac
agent_bin=""
for b in "$LOCAL_BIN" /usr/bin/porthole-agent; do
  if [ -x "$b" ]; then agent_bin="$b"; break; fi
done
[ -n "$agent_bin" ] || die "no porthole-agent binary: pass its path or a .deb (see --help)"

if [ "$skip_packages" -eq 0 ]; then
  if ! ldd "$agent_bin" >/dev/null 2>&1; then
    # ldd cannot read it (another architecture?): install this distribution's FFmpeg libraries
    # and let the --version check below say what is wrong.
    mapfile -t ffmpeg_pkgs < <(ffmpeg_fallback_pkgs)
    install_pkgs "${ffmpeg_pkgs[@]}"
  elif [ -n "$(missing_sonames "$agent_bin")" ]; then
    # Exactly the libraries this binary links (libavcodec59 for a Debian 12 build, ...).
    ensure_binary_libs "$agent_bin"
  fi
fi
if [ -n "$(missing_sonames "$agent_bin")" ]; then
  die "$agent_bin misses libraries: $(missing_sonames "$agent_bin" | tr '\n' ' ')"
fi
agent_version="$("$agent_bin" --version 2>/dev/null || true)"
[ -n "$agent_version" ] || die "$agent_bin --version failed"
log "agent: $agent_bin ($agent_version)"

# ---------------------------------------------------------------------------------------------
# User, token, certificate
if ! getent passwd "$SVC_USER" >/dev/null; then
  log "creating system user $SVC_USER (home $HOME_DIR)"
  useradd --system --user-group --home-dir "$HOME_DIR" --create-home \
    --shell /bin/bash --comment "Porthole agent" "$SVC_USER"
fi
install -d -m 0750 -o "$SVC_USER" -g "$SVC_USER" "$HOME_DIR"
install -d -m 0750 -o "$SVC_USER" -g "$SVC_USER" "$DATA_DIR"
install -d -m 0750 -o root -g "$SVC_USER" "$CONF_DIR"

if [ ! -s "$TOKEN_FILE" ]; then
  log "generating a token in $TOKEN_FILE"
  (umask 077; od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$TOKEN_FILE.new")
  mv -f "$TOKEN_FILE.new" "$TOKEN_FILE"
fi
chown "$SVC_USER:$SVC_USER" "$TOKEN_FILE"
chmod 0600 "$TOKEN_FILE"

command -v openssl >/dev/null 2>&1 || die "openssl not found (install it, or drop --skip-packages)"
primary_host="${hosts[0]:-$(hostname -f 2>/dev/null || hostname)}"
install -d -m 0750 -o root -g "$SVC_USER" "$TLS_DIR"
if [ "$regen_cert" -eq 1 ] || [ ! -s "$TLS_CERT" ] || [ ! -s "$TLS_KEY" ]; then
  san="DNS:localhost,IP:127.0.0.1,IP:::1"
  add_san() {
    local v="$1"
    if [[ "$v" =~ ^[0-9.]+$ || "$v" == *:* ]]; then san="$san,IP:$v"; else san="$san,DNS:$v"; fi
  }
  add_san "$(hostname)"
  [ "$(hostname -f 2>/dev/null || hostname)" = "$(hostname)" ] || add_san "$(hostname -f)"
  for h in "${hosts[@]}"; do add_san "$h"; done
  [ -z "$public_ip" ] || add_san "$public_ip"
  for ip in $(hostname -I 2>/dev/null || true); do
    [[ "$ip" == fe80:* ]] || add_san "$ip"
  done
  san="$(printf '%s' "$san" | tr ',' '\n' | awk '!seen[$0]++' | paste -sd, -)"
  log "generating a self-signed certificate for $primary_host"
  (umask 077
   openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 \
     -days 3650 -subj "/CN=$primary_host" -addext "subjectAltName=$san" \
     -keyout "$TLS_KEY.new" -out "$TLS_CERT.new" 2>/dev/null) ||
    die "openssl could not create the certificate"
  mv -f "$TLS_KEY.new" "$TLS_KEY"
  mv -f "$TLS_CERT.new" "$TLS_CERT"
fi
chown "$SVC_USER:$SVC_USER" "$TLS_KEY" "$TLS_CERT"
chmod 0600 "$TLS_KEY"
chmod 0644 "$TLS_CERT"
fingerprint="$(openssl x509 -in "$TLS_CERT" -noout -fingerprint -sha256 | cut -d= -f2)"
printf '%s\n' "$fingerprint" >"$TLS_CERT.sha256"
chmod 0644 "$TLS_CERT.sha256"

# ---------------------------------------------------------------------------------------------
# TLS or loopback: the agent gets --tls-cert/--tls-key only if it has them.
tls=0
if [ "$no_tls" -eq 0 ]; then
  serve_help="$("$agent_bin" serve --help 2>/dev/null || true)"
  if grep -q -- '--tls-cert' <<<"$serve_help" && grep -q -- '--tls-key' <<<"$serve_help"; then
    tls=1
  fi
fi
if [ -z "$listen" ]; then
  if [ "$tls" -eq 1 ]; then listen="0.0.0.0:$PORT_DEFAULT"; else listen="127.0.0.1:$PORT_DEFAULT"; fi
fi
listen_host="${listen%:*}"
listen_port="${listen##*:}"
case "$listen_host" in
  127.*|localhost|"[::1]") loopback=1 ;;
  *) loopback=0 ;;
esac
if [ "$tls" -eq 0 ] && [ "$loopback" -eq 0 ] && [ "$allow_plain" -eq 0 ]; then
  if [ "$no_tls" -eq 1 ]; then why="--no-tls was given"; else why="this agent build has no --tls-cert/--tls-key"; fi
  die "--listen $listen without TLS would send the token in clear text over the network.
  TLS is off ($why): keep the default 127.0.0.1:$PORT_DEFAULT and use an SSH tunnel,
  or pass --allow-plain-http on a network you trust."
fi

agent_args=()
if [ "$tls" -eq 1 ]; then agent_args+=(--tls-cert "$TLS_CERT" --tls-key "$TLS_KEY"); fi
[ -z "$public_ip" ] || agent_args+=(--public-ip "$public_ip")
[ -z "$udp_port" ] || agent_args+=(--udp-port "$udp_port")

env_new="$(mktemp)"
trap 'rm -f "$env_new"' EXIT
{
  echo "# Written by porthole install.sh on every run: change it by rerunning the script with"
  echo "# other options. Your own additions go in $CONF_DIR/agent.local.env, e.g."
  echo "#   PORTHOLE_EXTRA_ARGS=\"--workspace /srv/repo --display-size 1280x800\""
  echo "PORTHOLE_LISTEN=$listen"
  echo "PORTHOLE_SCREEN=$screen"
  echo "PORTHOLE_AGENT_ARGS=\"${agent_args[*]}\""
} >"$env_new"
if ! cmp -s "$env_new" "$ENV_FILE"; then
  install -m 0640 -o root -g "$SVC_USER" "$env_new" "$ENV_FILE"
fi

# ---------------------------------------------------------------------------------------------
# systemd units: the .deb ships them in /lib/systemd/system; otherwise copy ours.
for u in "${UNITS[@]}"; do
  if [ -f "/lib/systemd/system/$u" ] || [ -f "/usr/lib/systemd/system/$u" ]; then
    rm -f "$UNIT_DIR/$u"   # the package's copy is authoritative
    continue
  fi
  src="$here/$u"
  [ -f "$src" ] || src="/usr/share/porthole-agent/$u"
  [ -f "$src" ] || die "unit file $u not found beside $0"
  if ! cmp -s "$src" "$UNIT_DIR/$u"; then
    install -m 0644 -o root -g root "$src" "$UNIT_DIR/$u"
  fi
done

if systemd_running; then
  systemctl daemon-reload
  systemctl enable porthole-xvfb.service porthole-agent.service >/dev/null
  if [ "$no_start" -eq 0 ]; then
    systemctl start porthole-xvfb.service
    systemctl restart porthole-agent.service
  fi
else
  # Building an image or in a container: enable (symlinks only) and start at next boot.
  systemctl enable porthole-xvfb.service porthole-agent.service >/dev/null 2>&1 ||
    warn "could not enable the units; enable them once systemd runs"
  no_start=1
  warn "systemd is not running here: units installed and enabled, not started"
fi

# ---------------------------------------------------------------------------------------------
# Health check and what to tell the app
scheme=http
[ "$tls" -eq 1 ] && scheme=https
if [ "$no_start" -eq 0 ] && command -v curl >/dev/null 2>&1; then
  check_host="$listen_host"
  case "$check_host" in 0.0.0.0) check_host=127.0.0.1 ;; "[::]") check_host="[::1]" ;; esac
  healthy=0
  for _ in $(seq 1 30); do
    if curl -fsS -k --max-time 2 "$scheme://$check_host:$listen_port/v1/health" >/dev/null 2>&1; then
      healthy=1; break
    fi
    sleep 1
  done
  if [ "$healthy" -eq 1 ]; then
    log "agent is up: $scheme://$check_host:$listen_port/v1/health answers"
  else
    warn "the agent did not answer within 30 s: journalctl -u porthole-agent -u porthole-xvfb"
  fi
fi

url_host="${hosts[0]:-${public_ip:-$primary_host}}"
cat <<EOF

Porthole machine ready.
  token:        $TOKEN_FILE (copy it to the app's computer, keep it 0600)
  certificate:  $TLS_CERT
  SHA-256:      $fingerprint
EOF
if [ "$tls" -eq 1 ]; then
  cat <<EOF
  listening:    https://$listen (TLS)

On the computer running the app:
  ssh $url_host sudo cat $TOKEN_FILE > $url_host.token && chmod 600 $url_host.token
  porthole machine create --provider remote --name $(hostname) \\
    --url https://$url_host:$listen_port --token-file $url_host.token \\
    --fingerprint $fingerprint
EOF
else
  cat <<EOF
  listening:    http://$listen (plain HTTP; this agent build has no --tls-cert/--tls-key)

On the computer running the app, tunnel the API over SSH (the certificate is ready for a TLS
build of the agent: rerun this script after upgrading it and it switches to https on 0.0.0.0):
  ssh $url_host sudo cat $TOKEN_FILE > $url_host.token && chmod 600 $url_host.token
  ssh -N -L $listen_port:127.0.0.1:$listen_port $url_host &
  porthole machine create --provider remote --name $(hostname) \\
    --url http://127.0.0.1:$listen_port --token-file $url_host.token
EOF
fi
cat <<EOF

The live view's media is WebRTC over UDP straight to this host (not through the tunnel): on a
cloud VM rerun with --public-ip <its public address> --udp-port <N> and allow UDP N inbound.
EOF
