#!/bin/bash
# Build (or reuse from cache) the Debian 12 guest used by the kernel-initiator tests.
#
#   scripts/guest/build-image.sh            # prints the image directory on the last line
#   GLUSTER_ISCSI_GUEST_CACHE=/some/dir scripts/guest/build-image.sh
#   GUEST_FORCE_REBUILD=1 scripts/guest/build-image.sh
#
# Output directory ($CACHE/<key>/) holds vmlinuz, initrd.img, rootfs.img (ext4,
# raw, sparse) and a `.complete` marker. <key> is a hash of everything that goes
# into the image: this script, the stage-1 init, the package list, suite and
# mirror. Unchanged inputs => the cached image is reused (no network, ~0 s).
# The image is never written by test runs: each boot uses a fresh qcow2 overlay.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${GLUSTER_ISCSI_GUEST_CACHE:-/var/cache/gluster-iscsi/guest}
SUITE=bookworm
PACKAGES="open-iscsi,multipath-tools,e2fsprogs,sg3-utils,kmod,iproute2,udev,systemd-sysv,initramfs-tools,util-linux,procps"
IMAGE_SIZE=${GUEST_IMAGE_SIZE:-3G}
SOURCES=/etc/apt/sources.list.d/debian.sources

log() { echo "build-image: $*" >&2; }

if [ -n "${GUEST_MIRROR:-}" ]; then
    MIRROR=$GUEST_MIRROR
elif [ -r "$SOURCES" ]; then
    # first URIs: line of the deb822 file is the main archive
    MIRROR=$(awk '/^URIs:/ {print $2; exit}' "$SOURCES")
else
    MIRROR=$(awk '$1 == "deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list)
fi
: "${MIRROR:?cannot determine the Debian mirror}"

KEY=$( { cat "$0" "$HERE/guest-init.sh"; echo "$SUITE $PACKAGES $MIRROR $IMAGE_SIZE"; } \
       | sha256sum | cut -c1-16)
OUT=$CACHE/$KEY

if [ -z "${GUEST_FORCE_REBUILD:-}" ] && [ -f "$OUT/.complete" ]; then
    log "cached image $OUT"
    echo "$OUT"
    exit 0
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
# another builder may have finished while we waited for the lock
if [ -z "${GUEST_FORCE_REBUILD:-}" ] && [ -f "$OUT/.complete" ]; then
    echo "$OUT"
    exit 0
fi

# --- host tools -----------------------------------------------------------
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v mke2fs >/dev/null || need+=(e2fsprogs)
if [ ${#need[@]} -gt 0 ]; then
    log "installing host tools: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${need[@]}" >&2 \
        || { apt-get update >&2 && apt-get install -y --no-install-recommends "${need[@]}" >&2; }
fi

T0=$(date +%s)
WORK=$CACHE/.build-$KEY.$$
ROOT=$WORK/rootfs
cleanup() {
    for m in dev/pts dev proc sys; do
        mountpoint -q "$ROOT/$m" 2>/dev/null && umount -l "$ROOT/$m" || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$WORK"

log "debootstrap $SUITE from $MIRROR into $ROOT"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOT" "$MIRROR" >&2

mount -t proc proc "$ROOT/proc"
mount -t sysfs sysfs "$ROOT/sys"
mount --bind /dev "$ROOT/dev"
mount --bind /dev/pts "$ROOT/dev/pts"

in_root() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
            DEBIAN_FRONTEND=noninteractive LANG=C "$@"; }

# The kernel: the versioned package that the linux-image-amd64 metapackage points at.
in_root apt-get update >&2
KPKG=$(in_root apt-cache depends linux-image-amd64 \
       | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
: "${KPKG:?cannot resolve the kernel package behind linux-image-amd64}"
log "kernel package: $KPKG"
in_root sh -c "cd /tmp && apt-get download $KPKG" >&2
# apt-get install on the downloaded .deb == dpkg -i + its few dependencies
# (linux-base); no recommends (firmware, apparmor). It also builds the initrd.
in_root sh -c "cd /tmp && apt-get install -y --no-install-recommends ./${KPKG}_*.deb" >&2
rm -f "$ROOT"/tmp/*.deb

# Small configuration for the test guest.
echo gi-guest > "$ROOT/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 gi-guest\n' > "$ROOT/etc/hosts"
install -m 0755 "$HERE/guest-init.sh" "$ROOT/sbin/gi-init"
in_root apt-get clean
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin

KVER=${KPKG#linux-image-}
cp "$ROOT/boot/vmlinuz-$KVER" "$WORK/vmlinuz"
cp "$ROOT/boot/initrd.img-$KVER" "$WORK/initrd.img"

for m in dev/pts dev sys proc; do umount "$ROOT/$m"; done

log "making ext4 image ($IMAGE_SIZE, sparse)"
mke2fs -q -t ext4 -L gi-root -d "$ROOT" "$WORK/rootfs.img" "$IMAGE_SIZE" >&2

rm -rf "$OUT"
mkdir -p "$OUT"
mv "$WORK/vmlinuz" "$WORK/initrd.img" "$WORK/rootfs.img" "$OUT/"
cat > "$OUT/info" <<INFO
key=$KEY
kernel=$KVER
suite=$SUITE
mirror=$MIRROR
packages=$PACKAGES
built=$(date -u +%FT%TZ)
build_seconds=$(( $(date +%s) - T0 ))
INFO
touch "$OUT/.complete"

# keep only the current image (others are stale inputs)
if [ -z "${GUEST_KEEP_OLD:-}" ]; then
    for d in "$CACHE"/*/; do
        d=${d%/}
        [ "$d" = "$OUT" ] || [ ! -f "$d/.complete" ] || rm -rf "$d"
    done
fi
log "built $OUT in $(( $(date +%s) - T0 )) s"
echo "$OUT"
