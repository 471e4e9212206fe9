#!/usr/bin/env bash
# Runs before `npm test`: the integration tests drive real tools (a Mosquitto broker, a 2-node
# ejabberd cluster, socat pty pairs, a private dbus-daemon with bluetoothctl, libnfc's nfc-list,
# nfc-poll and nfc-mfultralight). Installs the missing Debian packages when it can (root or
# passwordless sudo); otherwise says exactly what to install. The tests run their own private
# instances of the brokers, so no package's system service is started by the install.
set -euo pipefail
declare -A package_of=(
  [mosquitto]=mosquitto [mosquitto_pub]=mosquitto-clients [socat]=socat [dbus-daemon]=dbus
  [nfc-list]=libnfc-bin [nfc-poll]=libnfc-examples [nfc-mfultralight]=libnfc-examples
  [bluetoothctl]=bluez [openssl]=openssl [chromium]=chromium
  [systemd-analyze]=systemd [systemd-notify]=systemd
  [ejabberdctl]=ejabberd [erl]=erlang-base [epmd]=erlang-base
)
missing=()
for tool in "${!package_of[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${package_of[$tool]}")
done
[ "${#missing[@]}" -eq 0 ] && exit 0
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
if ! command -v apt-get >/dev/null 2>&1; then
  echo "test tools missing: ${missing[*]} (install them with your package manager)" >&2
  exit 1
fi
if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
  echo "test tools missing; install them with: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "installing test tools: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# A policy-rc.d that refuses every start (exit 101) keeps the packages' services (ejabberd's on
# 5222/5280/1883, mosquitto's on 1883) from starting during the install; an existing one is put
# back afterwards, and ours is removed whatever happens.
policy=${ENSURE_TOOLS_POLICY_RC_D:-/usr/sbin/policy-rc.d}  # overridable for its test only
saved=""
if $SUDO test -e "$policy"; then
  saved="$policy.vehicle-agent-saved"
  $SUDO mv "$policy" "$saved"
fi
restore_policy() {
  $SUDO rm -f "$policy"
  if [ -n "$saved" ]; then $SUDO mv "$saved" "$policy"; fi
}
trap restore_policy EXIT
printf '#!/bin/sh\n# vehicle-agent test/ensure-tools.sh: no service starts while it installs\nexit 101\n' |
  $SUDO tee "$policy" >/dev/null
$SUDO chmod 755 "$policy"
$SUDO apt-get update -q >/dev/null || true
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
# Not at boot either: the tests start private ejabberd nodes on loopback; the system one, with
# Debian's config, would listen on every interface.
if printf '%s\n' "${missing[@]}" | grep -qx ejabberd && command -v systemctl >/dev/null 2>&1; then
  $SUDO systemctl disable ejabberd.service >/dev/null 2>&1 || true
fi
