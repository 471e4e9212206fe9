#!/usr/bin/env bash
# Runs before `npm test`: the integration tests drive real tools (a Mosquitto broker, socat pty
# pairs, a private dbus-daemon with bluetoothctl, libnfc's nfc-list, nfc-poll and nfc-mfultralight).
# Installs the missing Debian packages when it can (root or passwordless sudo); otherwise says
# exactly what to install.
set -euo pipefail
declare -A package_of=(
  [mosquitto]=mosquitto [mosquitto_pub]=mosquitto-clients [socat]=socat [dbus-daemon]=dbus
  [nfc-list]=libnfc-bin [nfc-poll]=libnfc-examples [nfc-mfultralight]=libnfc-examples
  [bluetoothctl]=bluez [openssl]=openssl [chromium]=chromium
  [systemd-analyze]=systemd [systemd-notify]=systemd
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
$SUDO apt-get update -q >/dev/null || true
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
