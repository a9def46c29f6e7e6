#!/usr/bin/env bash
# Cross-build the device agent (`edgeml-agent`, release) for ARM gateways with
# Debian's cross compilers, and check that qemu-user can run it.
#
#   scripts/cross-build.sh [--install] [TRIPLE...]
#
# TRIPLE: aarch64-unknown-linux-gnu, armv7-unknown-linux-gnueabihf (default:
# both). --install first installs the cross compilers, qemu-user-static and
# the rustup targets (Debian/Ubuntu, as root or with sudo).
#
# The binaries land in $CARGO_TARGET_DIR/<triple>/release/edgeml-agent, where
# tests/cross_arch.rs looks for them. 32-bit ARM has no Cranelift backend:
# there the agent is built with wasmtime's Pulley interpreter and without a
# compiler, and runs components precompiled to Pulley bytecode elsewhere
# (`edgeml precompile --target pulley32`, shipped with the release).
set -euo pipefail
cd "$(dirname "$0")/.."

install=0
triples=()
for a in "$@"; do
  case "$a" in
    --install) install=1 ;;
    *) triples+=("$a") ;;
  esac
done
[ ${#triples[@]} -gt 0 ] || triples=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)

if [ $install = 1 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf \
    libc6-dev-arm64-cross libc6-dev-armhf-cross qemu-user-static
  rustup target add "${triples[@]}"
fi

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER=arm-linux-gnueabihf-gcc
export CC_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-gcc
target_dir="${CARGO_TARGET_DIR:-target}"

for t in "${triples[@]}"; do
  case "$t" in
    aarch64-unknown-linux-gnu) features=(); qemu=(qemu-aarch64-static -L /usr/aarch64-linux-gnu) ;;
    armv7-unknown-linux-gnueabihf) features=(--no-default-features --features pulley); qemu=(qemu-arm-static -L /usr/arm-linux-gnueabihf) ;;
    *) echo "unsupported target $t" >&2; exit 2 ;;
  esac
  cargo build --release --locked -p edgeml-agent --target "$t" "${features[@]}"
  bin="$target_dir/$t/release/edgeml-agent"
  "${qemu[@]}" "$bin" --version
  printf '%s: %s bytes\n' "$bin" "$(stat -c %s "$bin")"
done
