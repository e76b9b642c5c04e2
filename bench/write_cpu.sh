#!/usr/bin/env bash
# CPU per 4 KiB random write on one Gluster volume: fio psync on its FUSE mount (the mount's
# glusterfs process + fio) against fio's gfapi / gfapi_async engines (gfapi runs inside fio),
# and the bricks' CPU for each (issue 19, BENCHMARKS.md "Stop 24: gfapi write CPU").
#
#   bench/write_cpu.sh VOLUME MOUNTPOINT [ROUNDS]
#
# 256 MiB file fw.img written whole first; 16,384 writes per row; CPU = utime+stime from
# /proc/PID/stat (glusterfs, glusterfsd) and fio's rusage (--thread: gfapi's threads count).
set -u
VOL=${1:?volume}; MNT=${2:?FUSE mountpoint}; ROUNDS=${3:-1}; F=fw.img; N=16384
FUSE=$(pgrep -f "glusterfs .*--volfile-id=/$VOL ")
BRICKS=$(pgrep -f "glusterfsd .*--volfile-id $VOL\." | tr '\n' ' ')
TCK=$(getconf CLK_TCK); T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
cpu() { local s=0 a; for p in "$@"; do read -r -a a < "/proc/$p/stat"; s=$((s + a[13] + a[14])); done; echo $s; }
[[ -f $MNT/$F && $(stat -c %s "$MNT/$F") -eq $((256 << 20)) ]] \
    || dd if=/dev/urandom of="$MNT/$F" bs=1M count=256 conv=fsync status=none
run() {  # LABEL FIO-ARGS...
    local label=$1; shift
    local f0 b0 f1 b1 u s
    f0=$(cpu $FUSE); b0=$(cpu $BRICKS)
    /usr/bin/time -f "%U %S" -o "$T/time" fio --name=w --thread --rw=randwrite --bs=4k \
        --randrepeat=0 --output-format=terse --terse-version=3 "$@" > "$T/fio" 2>&1
    f1=$(cpu $FUSE); b1=$(cpu $BRICKS); read -r u s < "$T/time"
    awk -F';' -v l="$label" -v n=$N -v u="$u" -v s="$s" -v f=$((f1 - f0)) -v b=$((b1 - b0)) -v t="$TCK" \
        'NF > 48 { fio = (u + s) * 1e6 / n; fu = f / t * 1e6 / n
                   printf "%-20s iops=%7s fio=%6.1f fuse=%6.1f client=%6.1f bricks=%6.1f us/write\n",
                          l, $49, fio, fu, fio + fu, b / t * 1e6 / n }' "$T/fio"
}
G=(--volume="$VOL" --brick=127.0.0.1 --filename=$F --size=256m --io_size=$((N * 4))k)
for _ in $(seq "$ROUNDS"); do
    run fuse-odirect-qd1 --ioengine=psync --direct=1 --filename="$MNT/$F" --size=256m --io_size=$((N * 4))k
    run fuse-buf-qd1 --ioengine=psync --filename="$MNT/$F" --size=256m --io_size=$((N * 4))k
    run fuse-buf-32jobs --ioengine=psync --filename="$MNT/$F" --size=256m --io_size=$((N * 4 / 32))k --numjobs=32 --group_reporting
    run fuse-odirect-32jobs --ioengine=psync --direct=1 --filename="$MNT/$F" --size=256m --io_size=$((N * 4 / 32))k --numjobs=32 --group_reporting
    run gfapi-qd1 --ioengine=gfapi "${G[@]}"
    run gfapi_async-qd32 --ioengine=gfapi_async --iodepth=32 "${G[@]}"
done
