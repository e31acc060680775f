#!/usr/bin/env bash
# Build, or reuse from the cache, an emulated ARM64 (aarch64) Python for the device runtime, from
# packages only, and print its folder (the last line of stdout):
#
#   - qemu-aarch64 from Debian's qemu-user (user-mode emulation: ARM64 Linux binaries on this x86 host);
#   - Debian bookworm arm64 packages of python3.11 and the libraries it and the wheels load
#     (`apt-get download` after `dpkg --add-architecture arm64`), each unpacked with `dpkg -x` into ROOT;
#   - manylinux aarch64 wheels pinned in scripts/arm64-requirements.txt (numpy, onnxruntime, Pillow,
#     pytest and their dependencies), `pip install --target SITE --platform manylinux_2_28_aarch64`.
#
# ENV/bin/python runs that Python: qemu-aarch64 -cpu $EDGETL_ARM64_CPU -L ROOT, PYTHONPATH =
# $EDGETL_ARM64_PATH (extra folders, e.g. the runtime under test) then SITE. EDGETL_ARM64_CPU picks
# qemu's CPU model: cortex-a76 (default; Armv8.2-A with dot product, like a Jetson Orin's Cortex-A78AE),
# cortex-a57 (Armv8.0, a Jetson Nano/TX2), max (every feature qemu has: SVE, i8mm, ...).
#
# Cache: ${EDGETL_ARM64_CACHE:-~/.cache/edgetl/arm64}/env-KEY, KEY = hash of this script (it holds the
# Debian package list) and the wheel requirements; a second run with the same KEY downloads nothing.
# ENV/versions.txt records what was installed (qemu, each .deb with its version, each wheel).
# Needs root for apt (installing qemu-user, adding the arm64 architecture) unless those are present;
# without them it fails with a message saying what to install, never passing silently.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REQUIREMENTS=scripts/arm64-requirements.txt
CACHE=${EDGETL_ARM64_CACHE:-$HOME/.cache/edgetl/arm64}
PY=${PY:-.venv/bin/python}
DEBS=(
    python3.11-minimal libpython3.11-minimal libpython3.11-stdlib
    libc6 libgcc-s1 libstdc++6 zlib1g libexpat1 libffi8 libssl3 libbz2-1.0 liblzma5 libsqlite3-0
    libcrypt1 libuuid1
)
PLATFORM=(--only-binary=:all: --platform manylinux_2_28_aarch64 --python-version 3.11 --implementation cp --abi cp311)

say() { echo "arm64-env: $*" >&2; }
die() {
    echo "arm64-env: FAILED: $*" >&2
    exit 1
}
as_root() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }

key=$(cat "${BASH_SOURCE[0]}" "$REQUIREMENTS" | sha256sum | cut -c1-16)
ENV=$CACHE/env-$key

if ! command -v qemu-aarch64 >/dev/null 2>&1; then
    as_root || die "qemu-aarch64 is not installed and this is not root with apt-get.
    Install it once as root: apt-get install qemu-user   (Debian/Ubuntu; Fedora: qemu-user), then rerun."
    say "installing qemu-user (qemu-aarch64)"
    (apt-get install -y -q qemu-user || (apt-get update -q && apt-get install -y -q qemu-user)) >&2 ||
        die "apt-get install qemu-user failed; install it by hand as root, then rerun."
    command -v qemu-aarch64 >/dev/null 2>&1 || die "qemu-user is installed but qemu-aarch64 is not on PATH."
fi

if [ -f "$ENV/.complete" ]; then
    echo "$ENV"
    exit 0
fi

[ -x "$PY" ] || PY=python3
"$PY" -m pip --version >/dev/null 2>&1 || die "no pip for $PY (run make install first, or set PY=a python with pip)."
mkdir -p "$CACHE"
WORK=$(mktemp -d "$CACHE/env-$key.tmp-XXXXXX")
trap 'rm -rf "$WORK"' EXIT
say "building $ENV"

# 1. Debian arm64 packages -> ROOT
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    as_root || die "apt has no arm64 architecture and this is not root.
    As root: dpkg --add-architecture arm64 && apt-get update   then rerun."
    say "dpkg --add-architecture arm64"
    dpkg --add-architecture arm64
    apt-get update -q >&2 || die "apt-get update failed after adding arm64."
fi
mkdir -p "$WORK/debs" "$WORK/root"
download() { (cd "$WORK/debs" && apt-get download -q -o APT::Sandbox::User=root "${DEBS[@]/%/:arm64}") >&2; }
if ! download; then
    as_root || die "apt-get download of the arm64 packages failed; as root run: apt-get update   then rerun."
    say "apt-get update (the arm64 package lists are missing or stale)"
    apt-get update -q >&2 && download || die "apt-get download failed for: ${DEBS[*]} (arm64)."
fi
for deb in "$WORK"/debs/*.deb; do
    dpkg -x "$deb" "$WORK/root"
    dpkg-deb -f "$deb" Package Version | paste -sd' ' | sed 's/^Package: \(.*\) Version: /deb \1 /' >>"$WORK/versions.txt"
done
[ -x "$WORK/root/usr/bin/python3.11" ] || die "python3.11 missing from the unpacked arm64 packages."

# 2. aarch64 wheels -> SITE
say "downloading aarch64 wheels ($REQUIREMENTS)"
"$PY" -m pip download -q --disable-pip-version-check --no-deps "${PLATFORM[@]}" -r "$REQUIREMENTS" -d "$WORK/wheels" >&2 ||
    die "pip download of the aarch64 wheels failed (needs PyPI)."
"$PY" -m pip install -q --disable-pip-version-check --no-deps --no-index --find-links "$WORK/wheels" "${PLATFORM[@]}" \
    --target "$WORK/site" -r "$REQUIREMENTS" >&2 || die "pip install --target of the aarch64 wheels failed."
(cd "$WORK/wheels" && ls -- *.whl | sed 's/^/wheel /') >>"$WORK/versions.txt"
echo "qemu $(qemu-aarch64 --version | head -1)" >>"$WORK/versions.txt"

# 3. the launcher: paths are those of the final folder
mkdir -p "$WORK/bin"
cat >"$WORK/bin/python" <<EOF
#!/bin/sh
# ARM64 Python 3.11 under qemu-aarch64, made by scripts/arm64-env.sh. Extra import folders: EDGETL_ARM64_PATH.
exec qemu-aarch64 -cpu "\${EDGETL_ARM64_CPU:-cortex-a76}" -L "$ENV/root" -U PYTHONHOME -E PYTHONNOUSERSITE=1 \\
    -E PYTHONPATH="\${EDGETL_ARM64_PATH:+\$EDGETL_ARM64_PATH:}$ENV/site" "$ENV/root/usr/bin/python3.11" "\$@"
EOF
chmod +x "$WORK/bin/python"

rm -rf "$ENV"
mv "$WORK" "$ENV"
trap - EXIT
# 4. smoke test: the emulated Python is ARM64 and imports what the runtime needs
check='import platform, sqlite3, numpy, onnxruntime, PIL, pytest
assert platform.machine() == "aarch64", platform.machine()
print(f"python {platform.python_version()} {platform.machine()}, numpy {numpy.__version__}, onnxruntime {onnxruntime.__version__}, Pillow {PIL.__version__}")'
if ! out=$("$ENV/bin/python" -c "$check" 2>&1); then
    rm -rf "$ENV"
    die "the emulated ARM64 Python does not start or import its packages:
$out"
fi
say "${out##*$'\n'}"
touch "$ENV/.complete"
for old in "$CACHE"/env-????????????????; do # environments of older package lists
    [ "$old" = "$ENV" ] || [ ! -d "$old" ] || rm -rf "$old"
done
echo "$ENV"
