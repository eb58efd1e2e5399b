#!/usr/bin/env bash
# Build (or reuse) an aarch64 sysroot for running the runtime under qemu-user.
#
# No root tricks: no chroot, no binfmt, no dpkg --add-architecture. Debian's arm64 python3.11
# and its shared libraries are fetched with apt under a private configuration and unpacked
# with `dpkg-deb -x`; the runtime-only wheels (numpy, onnxruntime, tokenizers, at the host's
# versions) go into SYSROOT/site with the host pip. Each emulated CPU gets a small root of
# symlinks into the sysroot plus its own ARM /proc/cpuinfo, because qemu 7.2 otherwise hands
# the guest the host's x86 cpuinfo and `import onnxruntime` segfaults.
#
# Usage: scripts/arm_sysroot.sh [SYSROOT]      (default .ci/cache/arm-sysroot)
# Env:   PYTHON  host python whose numpy/onnxruntime/tokenizers versions to mirror
#        ARM_SUITE  Debian suite (default bookworm, whose python is 3.11)
# Prints the sysroot path on stdout on success. Reruns are a no-op while the stamp matches.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SYSROOT="${1:-$here/.ci/cache/arm-sysroot}"
PYTHON="${PYTHON:-python3}"
SUITE="${ARM_SUITE:-bookworm}"
PYVER=3.11
MIRROR="${ARM_MIRROR:-http://deb.debian.org/debian}"

log() { echo "arm-sysroot: $*" >&2; }
# tool output goes to a log next to the sysroot; its tail is shown if a step fails
mkdir -p "$(dirname "$SYSROOT")"
LOG="$(dirname "$SYSROOT")/$(basename "$SYSROOT").log"
: > "$LOG"
trap 'rc=$?; if [[ $rc != 0 ]]; then log "failed (exit $rc); last lines of $LOG:"; tail -n 15 "$LOG" >&2; fi' EXIT

# the wheels must match what the host runs, so x86 and ARM compare like with like
versions="$("$PYTHON" - <<'PY'
import importlib.metadata as md
print(" ".join(f"{p}=={md.version(p)}" for p in ("numpy", "onnxruntime", "tokenizers")))
PY
)"
for tool in apt-get dpkg-deb; do
    command -v "$tool" >/dev/null || { log "$tool not found: this script needs a Debian/Ubuntu host"; exit 3; }
done
if ! command -v qemu-aarch64-static >/dev/null; then
    if [[ "$(id -u)" == 0 ]]; then
        log "installing qemu-user-static"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-user-static >>"$LOG" 2>&1 \
            || { apt-get update -q >>"$LOG" 2>&1 \
                 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-user-static >>"$LOG" 2>&1; } \
            || { log "could not install qemu-user-static"; exit 3; }
    else
        log "qemu-aarch64-static not found; install it: sudo apt-get install qemu-user-static"
        exit 3
    fi
fi

stamp="suite=$SUITE python=$PYVER wheels=$versions v=3"
if [[ -f "$SYSROOT/.stamp" && "$(cat "$SYSROOT/.stamp")" == "$stamp" ]]; then
    echo "$SYSROOT"
    exit 0
fi

rm -rf "$SYSROOT"
rm -rf "$(dirname "$SYSROOT")/arm-apt/archives"
mkdir -p "$SYSROOT"
apt_dir="$(dirname "$SYSROOT")/arm-apt"
mkdir -p "$apt_dir"/{lists/partial,archives/partial,etc/preferences.d,etc/apt.conf.d}
: > "$apt_dir/status"
cat > "$apt_dir/sources.list" <<SRC
deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR $SUITE main
SRC
cat > "$apt_dir/apt.conf" <<CONF
APT::Architecture "arm64";
APT::Architectures { "arm64"; };
APT::Install-Recommends "false";
APT::Sandbox::User "root";
Dir::State "$apt_dir";
Dir::State::Lists "$apt_dir/lists";
Dir::State::status "$apt_dir/status";
Dir::Cache "$apt_dir";
Dir::Cache::archives "$apt_dir/archives";
Dir::Etc::SourceList "$apt_dir/sources.list";
Dir::Etc::SourceParts "$apt_dir/etc/sources.list.d";
Dir::Etc::Preferences "$apt_dir/etc/preferences";
Dir::Etc::PreferencesParts "$apt_dir/etc/preferences.d";
Dir::Etc::Parts "$apt_dir/etc/apt.conf.d";
CONF
export APT_CONFIG="$apt_dir/apt.conf"

log "fetching arm64 python$PYVER from $MIRROR $SUITE"
apt-get update -q >>"$LOG" 2>&1
# an empty dpkg status makes apt resolve the whole dependency closure (libc6 included)
apt-get install -y -q --download-only "python$PYVER" libstdc++6 libgcc-s1 >>"$LOG" 2>&1
for deb in "$apt_dir"/archives/*.deb; do
    dpkg-deb -x "$deb" "$SYSROOT"
done
unset APT_CONFIG
# Debian bookworm is merged-/usr: the loader is looked up at /lib/ld-linux-aarch64.so.1
for d in lib bin sbin; do
    [[ -e "$SYSROOT/$d" ]] || ln -s "usr/$d" "$SYSROOT/$d"
done
[[ -x "$SYSROOT/usr/bin/python$PYVER" ]] || { log "python$PYVER missing after unpacking"; exit 3; }

log "installing aarch64 wheels: $versions"
# shellcheck disable=SC2086
"$PYTHON" -m pip install -q --disable-pip-version-check --no-compile --target "$SYSROOT/site" \
    --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 \
    --only-binary=:all: --python-version "$PYVER" --implementation cp $versions >>"$LOG" 2>&1

# one root per emulated CPU: symlinks into the sysroot + that CPU's /proc/cpuinfo
write_cpuinfo() {  # $1 part, $2 features
    local i
    for i in 0 1 2 3; do
        cat <<INFO
processor	: $i
BogoMIPS	: 108.00
Features	: $2
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x0
CPU part	: $1
CPU revision	: 1

INFO
    done
}
a72_features="fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"
a76_features="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"
for cpu in cortex-a72 cortex-a76; do
    root="$SYSROOT/cpu/$cpu"
    mkdir -p "$root/proc"
    for entry in usr lib bin sbin etc site; do
        [[ -e "$SYSROOT/$entry" ]] && ln -sfn "../../$entry" "$root/$entry"
    done
    case "$cpu" in
        cortex-a72) write_cpuinfo 0xd08 "$a72_features" > "$root/proc/cpuinfo" ;;
        cortex-a76) write_cpuinfo 0xd0b "$a76_features" > "$root/proc/cpuinfo" ;;
    esac
done

rm -rf "$apt_dir"  # the .debs and lists are not needed once unpacked
echo "$stamp" > "$SYSROOT/.stamp"
log "ready: $SYSROOT ($(du -sh "$SYSROOT" | cut -f1))"
echo "$SYSROOT"
