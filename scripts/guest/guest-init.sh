#!/bin/sh
# Stage-1 init of the gluster-iscsi test guest (baked into the image as /sbin/gi-init).
#
# Kept deliberately tiny so the cached image rarely changes: it mounts the API
# filesystems, unpacks the per-run bundle (a plain tar written to the second
# virtio disk, /dev/vdb) into a tmpfs and hands over to the bundle's
# init-main.sh, which does the real setup (udev, network, iscsid) and runs the
# scenario. Whatever happens, the guest powers off at the end.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH

mount -t proc proc /proc 2>/dev/null
mount -t sysfs sysfs /sys 2>/dev/null
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=0755,size=900m tmpfs /run
mkdir -p /run/lock/iscsi /run/gi /tmp

echo "GI stage1: unpacking bundle from /dev/vdb"
if tar -xf /dev/vdb -C /run/gi 2>/run/gi-untar.err && [ -f /run/gi/init-main.sh ]; then
    /bin/bash /run/gi/init-main.sh
    echo "GI stage1: init-main.sh exited with $?"
else
    echo "GI stage1: FATAL: no bundle on /dev/vdb: $(cat /run/gi-untar.err)"
    echo "RESULT bundle FAIL 0 no-bundle-on-vdb"
fi
sync
echo "GI POWEROFF"
echo o > /proc/sysrq-trigger
sleep 30
