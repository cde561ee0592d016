#!/usr/bin/env bash
# arm64 check (not in CI: it takes 10-30 minutes under emulation). Closest check to a real Pi:
# Raspberry Pi OS is Debian arm64.
#
#   sudo bash tools/arm64_check.sh
#
# 1. A Debian 12 arm64 root made with debootstrap and qemu-user-static (Debian's packages, installed
#    with apt-get when missing), cached in .arm64-root/ (git-ignored; delete it to start over).
# 2. The base install there: a wheel of this checkout built here, its dependencies from the
#    registry's aarch64 wheels (no torch, no extras), in a virtual environment.
# 3. On this machine, with the full install in .venv (./run demo or ./run test makes it): two devices
#    provisioned, trained, distilled and exported; device 0 holds device 1's seed.
# 4. In the arm64 root: `hdus-edge inspect --json` on the seed and `hdus-edge predict --json` on
#    device 0's state dir; predictions must match this machine's (same class, probabilities within 1e-4).
# Prints "arm64 check: pass" or "arm64 check: fail: REASON" (exit 0 / 1).
#
# Environment: HDUS_ARM64_ROOT (root folder), HDUS_DEBIAN_MIRROR (default http://deb.debian.org/debian),
# HDUS_HOST_VENV (the full install, default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"
ROOTFS="${HDUS_ARM64_ROOT:-$REPO/.arm64-root}"
MIRROR="${HDUS_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
HOST_VENV="${HDUS_HOST_VENV:-$REPO/.venv}"
GUEST_VENV=/opt/hdus-base
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1
started=$SECONDS

fail() { echo "arm64 check: fail: $*"; exit 1; }
step() { printf 'arm64 check: [%4ds] %s\n' "$((SECONDS - started))" "$*" >&2; }

MOUNTS=()
WORK=""
cleanup() {
  local i
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do umount -l "${MOUNTS[$i]}" 2>/dev/null || true; done
  [ -n "$WORK" ] && rm -rf "$WORK" "$ROOTFS$WORK"
}
trap cleanup EXIT

[ "$(id -u)" -eq 0 ] || fail "needs root (debootstrap, chroot, binfmt_misc): run it with sudo"
[ -x "$HOST_VENV/bin/hdus-edge" ] || fail "no full install at $HOST_VENV: run ./run test (or ./run demo) first"

# --- 1. tools and the emulator ---------------------------------------------------------------------
if ! command -v debootstrap >/dev/null || ! command -v qemu-aarch64-static >/dev/null || ! command -v update-binfmts >/dev/null; then
  step "installing debootstrap, qemu-user-static, binfmt-support"
  apt-get update -qq && apt-get install -y -qq --no-install-recommends debootstrap qemu-user-static binfmt-support >/dev/null \
    || fail "apt-get could not install debootstrap qemu-user-static binfmt-support"
fi
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || fail "cannot mount binfmt_misc (needed to run arm64 binaries)"
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  update-binfmts --import qemu-aarch64 >/dev/null 2>&1 || true
  update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
fi
grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null || fail "qemu-aarch64 is not registered with binfmt_misc"

WORK="$(mktemp -d /tmp/hdus-arm64.XXXXXX)"
# --- 2. a state dir exported on this machine --------------------------------------------------------
step "making two devices with the full install on this machine"
hd() { "$HOST_VENV/bin/hdus-edge" "$@" >>"$WORK/host.log" 2>&1 || fail "hdus-edge $* failed here: $(tail -2 "$WORK/host.log" | tr '\n' ' ')"; }
D="$WORK/fleet"
hd data split --out "$D/data" --devices 2 --reference-size 200 --test-size 100 --seed 0
hd fleet init --admin-dir "$D/admin" --fleet arm64 --broker mqtt://127.0.0.1:9 --reference "$D/data/reference"
for k in 0 1; do
  hd provision --admin-dir "$D/admin" --profile raspberry-pi-4 --device-id "dev-$k" --state-dir "$D/dev-$k" \
    --neighbors "dev-$((1 - k))"
  hd train --state-dir "$D/dev-$k" --data "$D/data/dev-$k" --epochs 2
  hd distill --state-dir "$D/dev-$k" --epochs 2
  hd export --state-dir "$D/dev-$k"
done
# dev-0 holds dev-1's seed, as its agent would after the exchange
"$HOST_VENV/bin/python" - "$D" <<'EOF' >>"$WORK/host.log" 2>&1 || fail "cannot store dev-1's seed in dev-0's store"
import json, sys
from pathlib import Path
from hdus_edge.state import StateDir
from hdus_edge.store import SeedStore
d = Path(sys.argv[1])
theirs = StateDir(d / "dev-1")
info = json.loads(theirs.seed_info_file.read_text())
with SeedStore(StateDir(d / "dev-0").store_dir) as store:
    store.put_seed("dev-1", info["version"], (theirs.models / "seed.onnx").read_bytes(), epoch=0, arch=info["arch"])
EOF
"$HOST_VENV/bin/python" -c "import numpy as np, sys; np.save(sys.argv[2], np.load(sys.argv[1])[:32])" "$D/data/test.npy" "$D/x.npy"
"$HOST_VENV/bin/hdus-edge" predict --state-dir "$D/dev-0" "$D/x.npy" --json >"$WORK/host-predict.json" 2>>"$WORK/host.log" \
  || fail "predict failed on this machine"
"$HOST_VENV/bin/hdus-edge" inspect "$D/dev-0/models/seed.onnx" --json >"$WORK/host-inspect.json" 2>>"$WORK/host.log" \
  || fail "inspect failed on this machine"
# --- 3. the Debian 12 arm64 root (cached) ----------------------------------------------------------
if [ ! -f "$ROOTFS/.hdus-root-ready" ]; then
  step "debootstrap Debian 12 arm64 into $ROOTFS (first run only)"
  # never delete through a bind mount left by an interrupted run
  if grep -q " $ROOTFS/" /proc/mounts; then fail "$ROOTFS still has mounts (see /proc/mounts); unmount them first"; fi
  rm -rf "$ROOTFS"
  debootstrap --arch=arm64 --foreign --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 || fail "debootstrap (first stage) failed: see $ROOTFS.log"
  cp /usr/bin/qemu-aarch64-static "$ROOTFS/usr/bin/"
  chroot "$ROOTFS" /debootstrap/debootstrap --second-stage >>"$ROOTFS.log" 2>&1 \
    || fail "debootstrap (second stage, under qemu) failed: see $ROOTFS.log"
  touch "$ROOTFS/.hdus-root-ready"
fi
# /proc and /dev, not /sys: under qemu-user an arm64 process would read this x86 machine's /sys, and
# onnxruntime (1.29 and later) walks /sys/devices when imported and crashes on what it finds (SIGSEGV).
# Without it, onnxruntime warns that cpuinfo cannot read the CPU list and runs; a real Pi has its own /sys.
for m in proc dev; do
  mount --bind "/$m" "$ROOTFS/$m" && MOUNTS+=("$ROOTFS/$m")
done
cp -L /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
# The CA bundle pip trusts here (PIP_CERT; else the system's, which may hold a local proxy's CA that
# the fresh root lacks) goes along, so pip in the root reaches the registry the same way.
guest_ca=""
host_ca="${PIP_CERT:-${REQUESTS_CA_BUNDLE:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}}"
if [ -f "$host_ca" ]; then
  cp -L "$host_ca" "$ROOTFS/etc/ssl/hdus-host-ca.crt" && guest_ca=/etc/ssl/hdus-host-ca.crt
fi
# A clean environment inside: this machine's other PIP_* settings (find-links paths) do not apply there.
guest() {
  env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=120 ${guest_ca:+PIP_CERT=$guest_ca} \
    ${https_proxy:+https_proxy=$https_proxy} ${http_proxy:+http_proxy=$http_proxy} \
    chroot "$ROOTFS" "$@"
}
machine="$(guest uname -m)"
[ "$machine" = aarch64 ] || fail "the root runs as $machine, not aarch64"

# --- 4. the base install there (no extras), from the registry's aarch64 wheels ----------------------
mkdir -p "$ROOTFS$WORK"
step "building the wheel of this checkout"
# from a clean copy: an in-tree build would reuse a stale build/ folder
mkdir -p "$WORK/src" && cp -a "$REPO/hdus_edge" "$REPO/pyproject.toml" "$REPO/README.md" "$WORK/src/"
find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +
"$HOST_VENV/bin/python" -m pip wheel -q --no-deps -w "$ROOTFS$WORK/wheel" "$WORK/src" >"$WORK/wheel.log" 2>&1 \
  || fail "cannot build a wheel of $REPO: $(tail -2 "$WORK/wheel.log" | tr '\n' ' ')"
wheel="$(cd "$ROOTFS$WORK/wheel" && ls hdus_edge-*.whl)"
if ! guest test -x "$GUEST_VENV/bin/python"; then
  guest python3 -m venv "$GUEST_VENV" || fail "python3 -m venv failed in the arm64 root"
fi
step "pip install $wheel (base install) in the arm64 root"
guest "$GUEST_VENV/bin/python" -m pip install -q "$WORK/wheel/$wheel" >"$WORK/pip.log" 2>&1 \
  || fail "pip install of the base install failed in the arm64 root: $(tail -3 "$WORK/pip.log" | tr '\n' ' ')"
guest "$GUEST_VENV/bin/python" -m pip install -q --no-deps --force-reinstall "$WORK/wheel/$wheel" >>"$WORK/pip.log" 2>&1 \
  || fail "reinstalling this checkout's wheel failed: $(tail -3 "$WORK/pip.log" | tr '\n' ' ')"
for heavy in torch sklearn matplotlib; do
  if guest "$GUEST_VENV/bin/python" -c "import $heavy" 2>/dev/null; then fail "the base install imports $heavy"; fi
done

mkdir -p "$ROOTFS$WORK" && cp -a "$D" "$ROOTFS$D"

# --- 5. the same commands on arm64 ------------------------------------------------------------------
step "hdus-edge inspect and predict in the arm64 root"
guest "$GUEST_VENV/bin/hdus-edge" inspect "$D/dev-0/models/seed.onnx" --json >"$WORK/arm-inspect.json" 2>"$WORK/arm.log" \
  || fail "hdus-edge inspect failed on arm64: $(tail -2 "$WORK/arm.log" | tr '\n' ' ')"
guest "$GUEST_VENV/bin/hdus-edge" predict --state-dir "$D/dev-0" "$D/x.npy" --json >"$WORK/arm-predict.json" 2>>"$WORK/arm.log" \
  || fail "hdus-edge predict failed on arm64: $(tail -2 "$WORK/arm.log" | tr '\n' ' ')"
versions="$(guest "$GUEST_VENV/bin/python" -c 'import platform, numpy, onnx, onnxruntime; print(platform.machine(), "python", platform.python_version(), "numpy", numpy.__version__, "onnx", onnx.__version__, "onnxruntime", onnxruntime.__version__)' 2>/dev/null)"
step "arm64 root: $versions"

verdict="$("$HOST_VENV/bin/python" - "$WORK" <<'EOF'
import json, sys
from pathlib import Path
w = Path(sys.argv[1])
host, arm = (json.loads((w / f"{n}-predict.json").read_text()) for n in ("host", "arm"))
hi, ai = (json.loads((w / f"{n}-inspect.json").read_text()) for n in ("host", "arm"))
if hi != ai:
    keys = sorted(k for k in set(hi) | set(ai) if hi.get(k) != ai.get(k))
    print(f"inspect differs from this machine's in {keys}"); sys.exit()
if host["members"] != arm["members"] or not host["members"]:
    print(f"ensemble members differ or are empty: here {host['members']}, arm64 {arm['members']}"); sys.exit()
if len(host["predictions"]) != len(arm["predictions"]):
    print("a different number of predictions"); sys.exit()
worst = 0.0
for h, a in zip(host["predictions"], arm["predictions"]):
    if h["class"] != a["class"]:
        print(f"input {h['index']}: class {a['class']} on arm64, {h['class']} here"); sys.exit()
    worst = max([worst] + [abs(x - y) for x, y in zip(h["probabilities"], a["probabilities"])])
if worst > 1e-4:
    print(f"probabilities differ by up to {worst:.2e} (> 1e-4)"); sys.exit()
print(f"ok {len(host['predictions'])} predictions of main + {len(host['members'])} seed(s), same classes, max |dp| {worst:.1e}")
EOF
)"
case "$verdict" in
  ok*) step "${verdict#ok }"; echo "arm64 check: pass (${versions}; $((SECONDS - started)) s)" ;;
  *) fail "$verdict" ;;
esac
