#!/usr/bin/env bash
# One-command set-up on a fresh Debian/Ubuntu machine: Mosquitto (for the integration tests),
# torch's CPU build first (a plain torch requirement would pull a multi-GB CUDA build), then
# hdus-edge with its test extras, editable.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq --no-install-recommends mosquitto
fi

python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e '.[test]'
echo "hdus-edge is installed: try 'hdus-edge demo'"
