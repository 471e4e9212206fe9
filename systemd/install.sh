#!/usr/bin/env bash
# Installs vehicle-agent as a hardened systemd service on a Raspberry Pi (or any Debian-like
# system with systemd). Run from a built checkout (npm ci && npm run build):
#
#   sudo ./systemd/install.sh                        install or update, enable the service
#   sudo ./systemd/install.sh --uninstall            remove it; keeps config, state and the user
#   sudo ./systemd/install.sh --uninstall --purge    also config, state (keys, audit log!), user
#
# Options:
#   --root DIR     install into DIR as if it were / (an SD card image, a test root); only
#                  `systemctl --root` is run, no daemon is reloaded and no package installed
#   --node PATH    the node binary the unit runs (default: `command -v node`)
#   --no-enable    do not enable (or start) the service
#   --no-packages  do not apt-get install the helpers the service uses (socat, gpiod)
#
# Idempotent: running it again gives the same result. It never overwrites an existing
# /etc/vehicle-agent/config.yaml or an edited /etc/udev/rules.d/99-vehicle-agent-pn532.rules.
# What it does, file by file: systemd/README.md.
set -euo pipefail

APP_DIR=/opt/vehicle-agent
CONF_DIR=/etc/vehicle-agent
STATE_DIR=/var/lib/vehicle-agent
RUN_DIR=/run/vehicle-agent
SERVICE=vehicle-agent.service
UNIT=/etc/systemd/system/$SERVICE
DROPIN_DIR=/etc/systemd/system/$SERVICE.d
DBUS_POLICY=/etc/dbus-1/system.d/vehicle-agent-bluez.conf
UDEV_PN532=/etc/udev/rules.d/99-vehicle-agent-pn532.rules
UDEV_GPIO=/etc/udev/rules.d/99-vehicle-agent-gpio.rules
WRAPPER=/usr/local/bin/vehicle-agent
USER_NAME=vehicle-agent
MARKER=$CONF_DIR/.installed-groups
GROUPS_WANTED=(dialout gpio)
MIN_NODE=20.19

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROOT=""
NODE=""
ENABLE=1
PACKAGES=1
MODE=install
PURGE=0

die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT=$(cd "$2" && pwd); shift 2 ;;
    --node) [ $# -ge 2 ] || die "--node needs a path"; NODE=$2; shift 2 ;;
    --no-enable) ENABLE=0; shift ;;
    --no-packages) PACKAGES=0; shift ;;
    --uninstall) MODE=uninstall; shift ;;
    --purge) PURGE=1; shift ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
[ "$PURGE" -eq 0 ] || [ "$MODE" = uninstall ] || die "--purge goes with --uninstall"
[ "$(id -u)" -eq 0 ] || die "run it as root: sudo $0 $*"
[ "$ROOT" != / ] || ROOT=""

# Paths inside the target root; shadow's tools take the same root with --prefix.
at() { printf '%s%s' "$ROOT" "$1"; }
PREFIX=()
[ -z "$ROOT" ] || PREFIX=(--prefix "$ROOT")
live() { [ -z "$ROOT" ]; }
has_user() { grep -q "^$1:" "$(at /etc/passwd)"; }
has_group() { grep -q "^$1:" "$(at /etc/group)"; }
id_of() { awk -F: -v n="$2" '$1==n {print $3}' "$(at "$1")"; }
in_group() { awk -F: -v g="$1" -v u="$2" '$1==g {n=split($4,m,","); for(i=1;i<=n;i++) if (m[i]==u) f=1} END {exit !f}' "$(at /etc/group)"; }

uninstall() {
  if live; then
    systemctl disable --now "$SERVICE" >/dev/null 2>&1 || true
    systemctl reset-failed "$SERVICE" >/dev/null 2>&1 || true
  elif command -v systemctl >/dev/null 2>&1; then
    systemctl --root="$ROOT" disable "$SERVICE" >/dev/null 2>&1 || true
  fi
  rm -f "$(at /etc/systemd/system/multi-user.target.wants/$SERVICE)"
  rmdir "$(at /etc/systemd/system/multi-user.target.wants)" 2>/dev/null || true
  rm -rf "$(at "$UNIT")" "$(at "$DROPIN_DIR")" "$(at "$APP_DIR")" "$(at "$WRAPPER")"
  rm -f "$(at "$DBUS_POLICY")" "$(at "$UDEV_PN532")" "$(at "$UDEV_GPIO")"
  rm -rf "$(at "$RUN_DIR")"
  if live; then
    systemctl daemon-reload || true
    systemctl reload dbus >/dev/null 2>&1 || true
    udevadm control --reload >/dev/null 2>&1 || true
  fi
  if [ "$PURGE" -eq 1 ]; then
    local created=""
    [ -f "$(at "$MARKER")" ] && created=$(cat "$(at "$MARKER")")
    rm -rf "$(at "$CONF_DIR")" "$(at "$STATE_DIR")"
    if has_user "$USER_NAME"; then userdel "${PREFIX[@]}" "$USER_NAME"; fi
    if has_group "$USER_NAME"; then groupdel "${PREFIX[@]}" "$USER_NAME"; fi
    for g in $created; do
      if has_group "$g"; then groupdel "${PREFIX[@]}" "$g"; fi
    done
    say "removed, with configuration, state (keys, keyring, audit log) and the $USER_NAME user"
  else
    say "removed; kept $CONF_DIR, $STATE_DIR (keys, keyring, audit log) and the $USER_NAME user (--purge removes them)"
  fi
}

if [ "$MODE" = uninstall ]; then
  uninstall
  exit 0
fi

# ── checks ───────────────────────────────────────────────────────────────────────
[ -f "$SRC/dist/src/cli/main.js" ] || die "no build in $SRC/dist: run \`npm ci && npm run build\` there first (as yourself)"
[ -f "$(at /etc/passwd)" ] && [ -f "$(at /etc/group)" ] || die "$(at /etc) has no passwd/group: not a root filesystem"
HOST_NODE=$(command -v node || true)
[ -n "$HOST_NODE" ] || die "node not found on PATH (it lists the production dependencies to copy)"
[ -n "$NODE" ] || NODE=$HOST_NODE
[ -n "$NODE" ] || die "node not found: install Node.js >= $MIN_NODE (e.g. from nodesource) or pass --node PATH"
case "$NODE" in
  /home/*|/root/*) die "$NODE is under a home directory, which the hardened unit cannot see (ProtectHome=yes): install Node.js system-wide (/usr/bin/node) or pass --node" ;;
  /*) ;;
  *) die "--node must be an absolute path" ;;
esac
if live; then
  [ -x "$NODE" ] || die "$NODE is not executable"
  "$NODE" -e "const [a,b]=process.versions.node.split('.').map(Number);const [x,y]='$MIN_NODE'.split('.').map(Number);process.exit(a>x||(a===x&&b>=y)?0:1)" \
    || die "Node.js $("$NODE" --version) is too old: $MIN_NODE or newer is needed"
fi

# ── helper packages: socat sends sd_notify datagrams, gpioset drives GPIO relays ──
if live && [ "$PACKAGES" -eq 1 ] && command -v apt-get >/dev/null 2>&1; then
  missing=()
  command -v socat >/dev/null 2>&1 || missing+=(socat)
  command -v gpioset >/dev/null 2>&1 || missing+=(gpiod)
  if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
  fi
fi

# ── user and groups ──────────────────────────────────────────────────────────────
if ! has_user "$USER_NAME"; then
  useradd "${PREFIX[@]}" --system --user-group --home-dir "$STATE_DIR" --no-create-home \
    --shell /usr/sbin/nologin --comment "vehicle-agent service" "$USER_NAME"
  say "created system user $USER_NAME"
fi
created_groups=""
[ -f "$(at "$MARKER")" ] && created_groups=$(cat "$(at "$MARKER")")
for g in "${GROUPS_WANTED[@]}"; do
  if ! has_group "$g"; then
    # Raspberry Pi OS has gpio (and a udev rule for it); plain Debian does not.
    groupadd "${PREFIX[@]}" --system "$g"
    created_groups="$created_groups $g"
    say "created group $g"
  fi
  in_group "$g" "$USER_NAME" || usermod "${PREFIX[@]}" -a -G "$g" "$USER_NAME"
done
uid=$(id_of /etc/passwd "$USER_NAME")
gid=$(id_of /etc/group "$USER_NAME")

# ── directories and the starting configuration ───────────────────────────────────
install -d -m 0750 -o 0 -g "$gid" "$(at "$CONF_DIR")"
install -d -m 0700 -o "$uid" -g "$gid" "$(at "$STATE_DIR")"
if [ ! -e "$(at "$CONF_DIR/config.yaml")" ]; then
  install -m 0640 -o 0 -g "$gid" "$SRC/systemd/config.yaml" "$(at "$CONF_DIR/config.yaml")"
  say "wrote $CONF_DIR/config.yaml: set the relay wiring and GPIO lines there (hw/README.md)"
fi
created_groups=$(printf '%s\n' $created_groups | sort -u | tr '\n' ' ' | sed 's/ $//')
if [ -n "$created_groups" ]; then
  printf '%s\n' "$created_groups" > "$(at "$MARKER")"
  chmod 0640 "$(at "$MARKER")"
fi

# ── the application: dist/, package.json and the production dependencies only ─────
stage="$(at "$APP_DIR").new"
rm -rf "$stage"
install -d -m 0755 "$stage"
(
  cd "$SRC"
  cp -R --no-preserve=ownership package.json README.md dist config hw systemd docs "$stage/"
  rm -rf "$stage/dist/bench" "$stage/dist/test"
  "$HOST_NODE" systemd/lib/prod-deps.mjs . | while read -r dir; do
    cp -R --no-preserve=ownership --parents "$dir" "$stage/"
  done
)
chown -R 0:0 "$stage"
chmod -R u=rwX,go=rX "$stage"
if [ -e "$(at "$APP_DIR")" ]; then
  rm -rf "$(at "$APP_DIR").old"
  mv "$(at "$APP_DIR")" "$(at "$APP_DIR").old"
fi
mv "$stage" "$(at "$APP_DIR")"
rm -rf "$(at "$APP_DIR").old"

install -d -m 0755 "$(dirname "$(at "$WRAPPER")")"
cat > "$(at "$WRAPPER").tmp" <<EOF
#!/bin/sh
# vehicle-agent command line (installed by $APP_DIR/systemd/install.sh). Talk to the running
# service as its user: sudo -u $USER_NAME vehicle-agent status
export VEHICLE_AGENT_CONFIG="\${VEHICLE_AGENT_CONFIG:-$CONF_DIR/config.yaml}"
exec $NODE $APP_DIR/dist/src/cli/main.js "\$@"
EOF
chmod 0755 "$(at "$WRAPPER").tmp"
mv "$(at "$WRAPPER").tmp" "$(at "$WRAPPER")"

# ── system integration: D-Bus policy, udev rules, the unit ─────────────────────────
install -D -m 0644 -o 0 -g 0 "$SRC/hw/dbus-vehicle-agent-bluez.conf" "$(at "$DBUS_POLICY")"
install -D -m 0644 -o 0 -g 0 "$SRC/hw/99-vehicle-agent-gpio.rules" "$(at "$UDEV_GPIO")"
# The PN532 rule is edited by hand (one line uncommented for your wiring): never overwritten.
[ -e "$(at "$UDEV_PN532")" ] || install -D -m 0644 -o 0 -g 0 "$SRC/hw/99-vehicle-agent-pn532.rules" "$(at "$UDEV_PN532")"
install -d -m 0755 "$(dirname "$(at "$UNIT")")"
sed "s#^ExecStart=/usr/bin/node #ExecStart=$NODE #" "$SRC/systemd/vehicle-agent.service" > "$(at "$UNIT").tmp"
chmod 0644 "$(at "$UNIT").tmp"
mv "$(at "$UNIT").tmp" "$(at "$UNIT")"
# Progressive restart back-off needs systemd >= 254 (RestartSteps=); older ones keep RestartSec=3s.
if live && [ "$(systemctl --version | awk 'NR==1 {print $2}')" -ge 254 ] 2>/dev/null; then
  install -d -m 0755 "$(at "$DROPIN_DIR")"
  printf '[Service]\n# systemd >= 254: 3 s, then longer pauses up to 60 s while it keeps failing.\nRestartSteps=5\nRestartMaxDelaySec=60s\n' \
    > "$(at "$DROPIN_DIR")/10-restart-backoff.conf"
fi

if live; then
  systemctl daemon-reload
  systemctl reload dbus >/dev/null 2>&1 || say "could not reload dbus: it reads $DBUS_POLICY at the next start"
  udevadm control --reload >/dev/null 2>&1 && udevadm trigger --subsystem-match=tty --subsystem-match=gpio >/dev/null 2>&1 || true
fi
if [ "$ENABLE" -eq 1 ]; then
  if live; then
    systemctl enable "$SERVICE" >/dev/null 2>&1
  elif command -v systemctl >/dev/null 2>&1; then
    systemctl --root="$ROOT" enable "$SERVICE" >/dev/null 2>&1
  else
    install -d -m 0755 "$(at /etc/systemd/system/multi-user.target.wants)"
    ln -sfn "$UNIT" "$(at /etc/systemd/system/multi-user.target.wants/$SERVICE)"
  fi
  say "enabled $SERVICE"
fi

if [ -e "$(at "$STATE_DIR/vehicle.json")" ]; then
  if live && [ "$ENABLE" -eq 1 ]; then
    systemctl restart "$SERVICE"
    say "started $SERVICE: journalctl -u vehicle-agent -f"
  fi
else
  say "next: provision the vehicle, then start it:"
  say "  install -m 0644 OWNER.pub.pem /tmp/ && sudo -u $USER_NAME vehicle-agent init --owner-key /tmp/OWNER.pub.pem"
  say "  sudo systemctl start vehicle-agent"
fi
