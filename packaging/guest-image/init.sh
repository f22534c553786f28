#!/bin/bash
# PID 1 of a Porthole QEMU guest. It lives on the per-machine seed disk (mounted read-only at
# /porthole by the image's /usr/sbin/porthole-init), next to the porthole-agent binary.
#
# The host talks to it over the virtio-serial port `org.porthole.ctl`, one `key value` line at
# a time, and `go` applies what was sent:
#   token T | agent-token T | hostname H | machine-id M | seed HEX | udp PORT | public-ip IP | tap-ip IP/N
#   size WxH | display-size WxH
#   browser 0|1 | idle 0|1 | stall SECS | workspace 0|1 | fresh 0|1   then   go
#   sync     flush the page cache (before a disk snapshot)
#   poweroff stop the agent (it finalizes its recording), sync, power off
# The first `go` starts the desktop and the agent. A later `go` (a clone restored from a memory
# snapshot) gives the machine its own identity and restarts only the agent with the new token
# and UDP port: the X server, the window manager and Chromium stay warm. Replies: `ok go`, `ok sync`.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8

log() { echo "porthole-init: $*" >/dev/console; }

mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sys /sys
mountpoint -q /dev || mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm
mountpoint -q /dev/pts || mount -t devpts -o gid=5,mode=620 devpts /dev/pts
mountpoint -q /dev/shm || mount -t tmpfs -o mode=1777 shm /dev/shm
mountpoint -q /run || mount -t tmpfs -o mode=755 run /run
mountpoint -q /tmp || mount -t tmpfs -o mode=1777 tmp /tmp
mkdir -p /run/porthole /var/lib/porthole /var/log/porthole /tmp/.X11-unix
chmod 1777 /tmp/.X11-unix

# No udev runs after the initramfs: load what the host's devices need.
for mod in virtio_net virtio_console virtio_rng 9pnet_virtio 9p; do modprobe -q "$mod" 2>/dev/null; done

# NICs by MAC: QEMU's user network (outbound traffic, DNS) and, when the host runs as root,
# a tap device the host reaches the agent through without NAT.
nic_by_mac() { for n in /sys/class/net/*; do [ "$(cat "$n/address")" = "$1" ] && basename "$n"; done; }
ip link set lo up
nic=$(nic_by_mac 52:54:00:12:34:56)
if [ -n "$nic" ]; then
  ip link set "$nic" up
  ip addr add 10.0.2.15/24 dev "$nic"
  ip route add default via 10.0.2.2
fi

ctl=""
for i in $(seq 1 100); do
  for p in /sys/class/virtio-ports/*; do
    [ "$(cat "$p/name" 2>/dev/null)" = org.porthole.ctl ] && ctl=/dev/$(basename "$p")
  done
  [ -n "$ctl" ] && break
  sleep 0.05
done
[ -n "$ctl" ] || { log "no org.porthole.ctl port"; sleep 2; echo o >/proc/sysrq-trigger; }

W=1280 H=800 PUBIP="" TAPIP="" DSIZE="" BROWSER=0 IDLE=0 STALL="" UDP="" TOKEN="" NAME=porthole MID="" SEED="" WS=0 FRESH=0
desktop_up=0 agent_pid=""

start_desktop() {
  # Children must not hold the control port open (fd 3): the next host could not open it.
  # Xvnc (no VNC port, only its RandR) lets the screen follow a viewer's window; Xvfb cannot.
  if command -v Xvnc >/dev/null; then
    Xvnc :0 -geometry "${W}x${H}" -depth 24 -rfbport -1 -SecurityTypes None -nolisten tcp >/var/log/porthole/xserver.log 2>&1 3<&- &
  else
    Xvfb :0 -screen 0 "${W}x${H}x24" -nolisten tcp >/var/log/porthole/xserver.log 2>&1 3<&- &
  fi
  for i in $(seq 1 500); do [ -e /tmp/.X11-unix/X0 ] && break; sleep 0.02; done
  DISPLAY=:0 openbox >/var/log/porthole/openbox.log 2>&1 3<&- &
  if [ "$BROWSER" = 1 ]; then
    DISPLAY=:0 chromium --no-sandbox --test-type --disable-gpu --no-first-run --disable-background-networking \
      --disable-component-update --disable-sync --disable-dev-shm-usage --user-data-dir=/root/.chromium \
      --window-position=0,0 --window-size="$W,$H" about:blank >/var/log/porthole/chromium.log 2>&1 3<&- &
  fi
  desktop_up=1
}

stop_agent() {
  [ -n "$agent_pid" ] || return 0
  kill -TERM "$agent_pid" 2>/dev/null
  for i in $(seq 1 100); do kill -0 "$agent_pid" 2>/dev/null || break; sleep 0.05; done
  kill -KILL "$agent_pid" 2>/dev/null
  wait "$agent_pid" 2>/dev/null
  agent_pid=""
}

start_agent() {
  local args=(serve --display :0 --listen 0.0.0.0:7300 --token-file /run/porthole/token
    --data-dir /var/lib/porthole/agent)
  # Two principals: the coding agent's processes only ever see the agent token; the agent
  # deletes both files once read (apply_identity writes them again before every start).
  [ -n "$ATOKEN" ] && args+=(--agent-token-file /run/porthole/agent-token --forget-token-files)
  [ -n "$PUBIP" ] && args+=(--public-ip "$PUBIP")
  [ -n "$UDP" ] && args+=(--udp-port "$UDP")
  [ -n "$DSIZE" ] && args+=(--display-size "$DSIZE")
  [ -n "$STALL" ] && args+=(--stall-after "$STALL")
  [ "$IDLE" = 1 ] && args+=(--idle)
  if [ "$WS" = 1 ]; then
    mkdir -p /workspace
    mountpoint -q /workspace || mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 workspace /workspace
    args+=(--workspace /workspace)
  fi
  (if [ "$WS" = 1 ]; then cd /workspace; fi; DISPLAY=:0 RUST_LOG=${RUST_LOG:-info,webrtc=error,webrtc_ice=error} \
    exec /porthole/porthole-agent "${args[@]}") >>/var/log/porthole/agent.log 2>&1 3<&- &
  agent_pid=$!
}

apply_identity() {
  if [ -n "$TAPIP" ]; then
    tap=$(nic_by_mac 52:54:00:70:68:01)
    ip link set "$tap" up; ip addr flush dev "$tap"; ip addr add "$TAPIP" dev "$tap"
  fi
  hostname "$NAME"; echo "$NAME" >/etc/hostname
  [ -n "$MID" ] && echo "$MID" >/etc/machine-id
  # Clones of one memory snapshot share their RNG state: mix in fresh host randomness.
  [ -n "$SEED" ] && echo "$SEED" >/dev/urandom
  umask 077; printf '%s' "$TOKEN" >/run/porthole/token
  [ -n "$ATOKEN" ] && printf '%s' "$ATOKEN" >/run/porthole/agent-token
  umask 022
}

go() {
  apply_identity
  [ "$desktop_up" = 1 ] || start_desktop
  stop_agent
  # A clone must not show the recordings of the machine it was cloned from.
  [ "$FRESH" = 1 ] && rm -rf /var/lib/porthole/agent
  start_agent
  log "agent started (udp $UDP)"
}

poweroff_now() {
  stop_agent
  kill -TERM -1 2>/dev/null; sleep 0.5
  sync
  mount -o remount,ro / 2>/dev/null
  echo o >/proc/sysrq-trigger
}

log "waiting for the host on $ctl"
while true; do
  exec 3<>"$ctl"
  while read -r key val <&3; do
    case "$key" in
      token) TOKEN=$val ;;
      agent-token) ATOKEN=$val ;;
      hostname) NAME=$val ;;
      machine-id) MID=$val ;;
      seed) SEED=$val ;;
      udp) UDP=$val ;;
      public-ip) PUBIP=$val ;;
      tap-ip) TAPIP=$val ;;
      size) W=${val%x*}; H=${val#*x} ;;
      display-size) DSIZE=$val ;;
      browser) BROWSER=$val ;;
      idle) IDLE=$val ;;
      stall) STALL=$val ;;
      workspace) WS=$val ;;
      fresh) FRESH=$val ;;
      go) go; echo "ok go" >&3 ;;
      sync) sync; echo "ok sync" >&3 ;;
      poweroff) echo "ok poweroff" >&3; poweroff_now ;;
      "") ;;
      *) log "unknown control line: $key" ;;
    esac
  done
  exec 3<&-
  # The host hung up (the CLI exits after create): wait for the next connection.
  sleep 0.2
done
