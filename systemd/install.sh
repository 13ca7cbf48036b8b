#!/bin/sh
# Install (or uninstall) gpu-power-agent as a systemd service.
#
#   sudo systemd/install.sh [--binary PATH]        install or upgrade, then enable --now
#   sudo systemd/install.sh --uninstall [--purge]  stop (restores every GPU), disable, remove
#
# Installs:
#   /usr/local/bin/gpu-power-agent                  the compiled binary (deno task compile)
#   /etc/systemd/system/gpu-power-agent.service     the unit
#   /etc/gpu-power-agent/caps.example.yaml          the documented example (always updated)
#   /etc/gpu-power-agent/caps.yaml                  created from the example only if missing:
#                                                   an existing caps file is never overwritten
# DESTDIR=/some/root installs below that root and runs no systemctl (packaging, tests).
# The binary defaults to dist/gpu-power-agent-<arch>-unknown-linux-gnu next to this script's
# directory; --binary (or BINARY=) picks another.
set -eu

DESTDIR="${DESTDIR:-}"
BINARY="${BINARY:-}"
SYSTEMCTL="${SYSTEMCTL:-systemctl}"
ACTION=install
PURGE=0
HERE="$(cd "$(dirname "$0")" && pwd)"

BIN_PATH=/usr/local/bin/gpu-power-agent
UNIT_PATH=/etc/systemd/system/gpu-power-agent.service
CONFIG_DIR=/etc/gpu-power-agent
STATE_DIR=/var/lib/gpu-power-agent

die() {
  echo "install.sh: $*" >&2
  exit 1
}

while [ $# -gt 0 ]; do
  case "$1" in
    --binary) [ $# -ge 2 ] || die "--binary needs a path"; BINARY="$2"; shift 2 ;;
    --binary=*) BINARY="${1#--binary=}"; shift ;;
    --uninstall) ACTION=uninstall; shift ;;
    --purge) PURGE=1; shift ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

real_run() { [ -z "$DESTDIR" ]; }

if real_run && [ "$(id -u)" -ne 0 ]; then
  die "run as root (sudo), or set DESTDIR to install below another root"
fi

if [ "$ACTION" = uninstall ]; then
  if real_run; then
    # Stopping runs the agent's SIGTERM restore and ExecStopPost=gpu-power-agent restore:
    # every GPU goes back to its recorded baseline before anything is removed.
    "$SYSTEMCTL" disable --now gpu-power-agent.service || true
  fi
  rm -f "$DESTDIR$UNIT_PATH" "$DESTDIR$BIN_PATH"
  if [ "$PURGE" -eq 1 ]; then
    rm -rf "$DESTDIR$CONFIG_DIR" "$DESTDIR$STATE_DIR"
  else
    echo "Kept $CONFIG_DIR and $STATE_DIR (--purge removes them)."
  fi
  if real_run; then "$SYSTEMCTL" daemon-reload; fi
  echo "gpu-power-agent uninstalled."
  exit 0
fi

if [ -z "$BINARY" ]; then
  case "$(uname -m)" in
    x86_64|amd64) arch=x86_64 ;;
    aarch64|arm64) arch=aarch64 ;;
    *) die "unsupported machine '$(uname -m)': pass --binary PATH" ;;
  esac
  BINARY="$HERE/../dist/gpu-power-agent-$arch-unknown-linux-gnu"
fi
[ -f "$BINARY" ] || die "binary '$BINARY' not found: build it with 'deno task compile' or pass --binary PATH"

install -d -m 0755 "$DESTDIR/usr/local/bin" "$DESTDIR/etc/systemd/system" "$DESTDIR$CONFIG_DIR"
# Write next to the target and rename: a running binary or unit is replaced atomically.
install -m 0755 "$BINARY" "$DESTDIR$BIN_PATH.new"
mv -f "$DESTDIR$BIN_PATH.new" "$DESTDIR$BIN_PATH"
install -m 0644 "$HERE/gpu-power-agent.service" "$DESTDIR$UNIT_PATH.new"
mv -f "$DESTDIR$UNIT_PATH.new" "$DESTDIR$UNIT_PATH"
install -m 0644 "$HERE/caps.example.yaml" "$DESTDIR$CONFIG_DIR/caps.example.yaml"
if [ -e "$DESTDIR$CONFIG_DIR/caps.yaml" ]; then
  echo "Kept existing $CONFIG_DIR/caps.yaml."
else
  install -m 0644 "$HERE/caps.example.yaml" "$DESTDIR$CONFIG_DIR/caps.yaml"
  echo "Installed $CONFIG_DIR/caps.yaml (caps nothing until you edit it)."
fi

if real_run; then
  "$SYSTEMCTL" daemon-reload
  if "$SYSTEMCTL" is-active --quiet gpu-power-agent.service; then
    # Upgrade: the old agent restores every GPU on stop, the new one re-applies the caps.
    "$SYSTEMCTL" enable gpu-power-agent.service
    "$SYSTEMCTL" restart gpu-power-agent.service
  else
    "$SYSTEMCTL" enable --now gpu-power-agent.service
  fi
  echo "gpu-power-agent installed and running: systemctl status gpu-power-agent"
else
  echo "gpu-power-agent installed below $DESTDIR (no systemctl: DESTDIR is set)."
fi
