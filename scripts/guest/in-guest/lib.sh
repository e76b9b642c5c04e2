# Shell library for the in-guest scenarios (sourced; bash).
#
# Output protocol on the serial console (parsed by scripts/guest/guest_harness.py):
#   RESULT <scenario>.<step> PASS|FAIL <seconds> <detail...>
#   HOSTCMD <word> [args]     (informational; the request itself goes over the
#                              virtio-serial control port, fd 7, and the host
#                              answers "OK [info]" or "ERR <why>" on the same port)
#   GI <text>                 (log lines)
# Everything else (step output, kernel messages) is free text.

gi_now() { date +%s.%N; }
gi_since() { awk -v a="$1" -v b="$(gi_now)" 'BEGIN { printf "%.2f", b - a }'; }
gi_log() { echo "GI $*"; }
oneline() { tr -s '\r\n\t' '   ' | cut -c1-300; }

# result STEP PASS|FAIL SECONDS DETAIL...
result() {
    local name=$1 status=$2 secs=$3; shift 3
    echo "RESULT ${GI_SCENARIO}.${name} ${status} ${secs} $*"
}

# step NAME CMD [ARGS...]: run CMD in this shell (so it can set variables),
# show its output indented, print a RESULT line. A failing step ends the
# scenario (later steps would only report consequences) unless GI_KEEP_GOING=1.
# A step may put a one-line summary into STEP_DETAIL.
step() {
    local name=$1; shift
    local t0 rc out=/run/gi/step.out
    STEP_DETAIL=
    t0=$(gi_now)
    gi_log "step ${name}: $*"
    "$@" >"$out" 2>&1
    rc=$?
    sed 's/^/  | /' "$out"
    [ -n "$(tail -c 1 "$out")" ] && echo   # keep RESULT at the start of a line
    if [ $rc -eq 0 ]; then
        result "$name" PASS "$(gi_since "$t0")" "${STEP_DETAIL:-ok}"
        return 0
    fi
    local why
    why=$(grep -v '^[[:space:]]*$' "$out" | tail -n 3 | oneline)
    result "$name" FAIL "$(gi_since "$t0")" "rc=$rc ${STEP_DETAIL:+$STEP_DETAIL; }${why}"
    if [ "${GI_KEEP_GOING:-0}" != 1 ]; then
        gi_log "aborting scenario after failed step ${name}"
        exit 1
    fi
    return $rc
}

# step_expect_fail NAME CMD...: PASS when CMD fails (e.g. a refused login).
step_expect_fail() {
    local name=$1; shift
    step "$name" _negate "$@"
}
_negate() {
    if "$@"; then echo "unexpectedly succeeded: $*"; return 1; fi
    local why; why=$(grep -o 'reported error ([^)]*)' /run/gi/step.out | tail -n 1)
    STEP_DETAIL="refused as expected${why:+: $why}"
    return 0
}

# hostcmd WORD [ARGS...]: ask the host to do something, wait for its answer.
hostcmd() {
    echo "HOSTCMD $*"
    if [ -z "${GI_CTL:-}" ]; then echo "no control channel"; return 1; fi
    printf 'HOSTCMD %s\n' "$*" >&7
    local reply
    if ! IFS= read -r -t "${GI_HOSTCMD_TIMEOUT:-300}" reply <&7; then
        echo "no answer from the host for: $*"
        return 1
    fi
    reply=${reply%$'\r'}
    echo "HOSTREPLY $reply"
    HOSTREPLY=$reply
    STEP_DETAIL="host: $reply"
    [ "${reply%% *}" = OK ]
}

# wait_for SECONDS CMD...: poll CMD every 0.5 s.
wait_for() {
    local limit=$1; shift
    local t0; t0=$(date +%s)
    while ! "$@" >/dev/null 2>&1; do
        if [ $(( $(date +%s) - t0 )) -ge "$limit" ]; then
            echo "timed out after ${limit}s waiting for: $*"
            return 1
        fi
        sleep 0.5
    done
}

# iscsid_conf_set KEY VALUE: set a key the way an admin edits /etc/iscsi/iscsid.conf
# (node records created afterwards by discovery inherit these defaults).
iscsid_conf_set() {
    local key=$1 value=$2 f=/etc/iscsi/iscsid.conf
    local re; re=$(printf '%s' "$key" | sed 's/[.[\]]/\\&/g')
    sed -i -E "/^[#[:space:]]*${re}[[:space:]]*=/d" "$f"
    echo "$key = $value" >> "$f"
}
iscsid_conf_unset() {
    local re; re=$(printf '%s' "$1" | sed 's/[.[\]]/\\&/g')
    sed -i -E "/^[#[:space:]]*${re}[[:space:]]*=/d" /etc/iscsi/iscsid.conf
}

# ---------------------------------------------------------------------------
# iSCSI helpers
# ---------------------------------------------------------------------------
lun_link() { echo "/dev/disk/by-path/ip-$1-iscsi-${GI_TARGET_IQN}-lun-${GI_LUN}"; }

# discover PORTAL: the cookbook's sendtargets discovery. The answer must list
# our target at PORTAL (the address the guest used). With GI_STRICT_DISCOVERY=0
# (reference targets that advertise their own 127.0.0.1 listener, e.g. tgt) a
# target listed under another address gets a static node record for PORTAL.
discover() {
    local portal=$1 out
    out=$(iscsiadm --mode discovery --type sendtargets --portal "$portal" 2>&1)
    local rc=$?
    echo "$out"
    [ $rc -eq 0 ] || return $rc
    if echo "$out" | grep -Eq "^${portal},[0-9]+ ${GI_TARGET_IQN}\$"; then
        STEP_DETAIL="${GI_TARGET_IQN} at ${portal}"
        return 0
    fi
    if ! echo "$out" | grep -q " ${GI_TARGET_IQN}\$"; then
        echo "target ${GI_TARGET_IQN} not in the SendTargets answer"
        return 1
    fi
    local adv; adv=$(echo "$out" | awk -v t="$GI_TARGET_IQN" '$2 == t {print $1}' | tr '\n' ' ')
    if [ "${GI_STRICT_DISCOVERY:-1}" = 1 ]; then
        echo "target advertised at [${adv}] instead of ${portal}"
        return 1
    fi
    local a
    for a in $adv; do
        iscsiadm -m node -T "$GI_TARGET_IQN" -p "${a%,*}" -o delete >/dev/null 2>&1
    done
    iscsiadm -m node -o new -T "$GI_TARGET_IQN" -p "$portal" || return 1
    STEP_DETAIL="target advertised [${adv}]; static node record for ${portal} (non-strict)"
}

# node_login PORTAL
node_login() {
    iscsiadm --mode node --targetname "$GI_TARGET_IQN" --portal "$1" --login && return 0
    local rc=$?
    echo "--- iscsid log tail:"; tail -n 15 /run/gi/iscsid.log 2>/dev/null
    return $rc
}
node_logout() {
    iscsiadm --mode node --targetname "$GI_TARGET_IQN" --portal "$1" -u
}

# disk_appears PORTAL: wait for the LUN's block device; sets DEV and DEVNAME.
disk_appears() {
    local link; link=$(lun_link "$1")
    wait_for 60 test -b "$link" || { ls -l /dev/disk/by-path/ 2>&1; return 1; }
    udevadm settle --timeout=20
    DEV=$(readlink -f "$link")
    DEVNAME=$(basename "$DEV")
    lsblk -o NAME,SIZE,TYPE,TRAN,VENDOR,MODEL,SERIAL
    local line; line=$(lsblk -dno NAME,TRAN,TYPE "$DEV")
    echo "$line" | grep -Eq "^${DEVNAME}[[:space:]]+iscsi[[:space:]]+disk" \
        || { echo "lsblk does not show ${DEVNAME} as an iscsi disk: ${line}"; return 1; }
    SIZE=$(blockdev --getsize64 "$DEV")
    [ "$SIZE" -gt 0 ] || { echo "zero-sized disk"; return 1; }
    STEP_DETAIL="${DEVNAME} $((SIZE / 1048576)) MiB"
}

# disk_gone: after logout the device node, sysfs entry and lsblk row are gone.
disk_gone() {
    local name=$1 link=$2
    wait_for 30 sh -c "! test -e /sys/block/${name} && ! test -e '${link}'" || return 1
    if lsblk -dno NAME | grep -qx "$name"; then echo "lsblk still lists ${name}"; return 1; fi
    local s; s=$(iscsiadm -m session 2>&1)
    echo "$s"
    STEP_DETAIL="${name} gone"
}

make_pattern() { # FILE MiB
    [ -f "$1" ] || head -c "$(( $2 * 1048576 ))" /dev/urandom > "$1"
}

# dd_verify DEV: write random data at the start and at the end of the disk with
# O_DIRECT, read it back with O_DIRECT, compare.
dd_verify() {
    local dev=$1 mib=16 size_mib
    make_pattern /run/gi/pat16 $mib
    size_mib=$(( $(blockdev --getsize64 "$dev") / 1048576 ))
    local t0; t0=$(gi_now)
    for off in 0 $(( size_mib - mib )); do
        dd if=/run/gi/pat16 of="$dev" bs=1M seek=$off oflag=direct conv=fsync status=none \
            || { echo "write at ${off} MiB failed"; return 1; }
    done
    local wsec; wsec=$(gi_since "$t0"); t0=$(gi_now)
    for off in 0 $(( size_mib - mib )); do
        dd if="$dev" bs=1M skip=$off count=$mib iflag=direct status=none \
            | cmp - /run/gi/pat16 || { echo "data mismatch at ${off} MiB"; return 1; }
    done
    local rsec; rsec=$(gi_since "$t0")
    STEP_DETAIL="2x${mib} MiB written in ${wsec}s, read back+verified in ${rsec}s"
}

fs_mkfs() { mkfs.ext4 -F -q "$1" && STEP_DETAIL="ext4 on $1"; }

fs_write() { # DEV: mount, write files, record checksums, unmount
    local dev=$1
    mount "$dev" /mnt/gi || return 1
    mkdir -p /mnt/gi/data
    for i in $(seq 1 12); do
        head -c $(( (RANDOM % 256 + 1) * 1024 )) /dev/urandom > /mnt/gi/data/small$i || return 1
    done
    head -c 8M /dev/urandom > /mnt/gi/data/big || return 1
    (cd /mnt/gi && find data -type f | sort | xargs sha256sum) > /run/gi/fs.sums
    sync
    umount /mnt/gi || return 1
    STEP_DETAIL="$(wc -l < /run/gi/fs.sums) files written"
}

fs_fsck() { fsck.ext4 -fn "$1"; }

fs_verify() { # DEV: remount (cold cache) and compare checksums
    local dev=$1
    sync; echo 3 > /proc/sys/vm/drop_caches
    blockdev --flushbufs "$dev"
    mount "$dev" /mnt/gi || return 1
    (cd /mnt/gi && sha256sum --quiet -c /run/gi/fs.sums) || { umount /mnt/gi; return 1; }
    umount /mnt/gi || return 1
    STEP_DETAIL="$(wc -l < /run/gi/fs.sums) files verified after remount"
}

# cookbook PREFIX PORTAL: the client cookbook, end to end, one step per line
cookbook() {
    local p=$1 portal=$2
    step "${p}discovery" discover "$portal"
    step "${p}login" node_login "$portal"
    step "${p}disk_appears" disk_appears "$portal"
    local dev=$DEV name=$DEVNAME link; link=$(lun_link "$portal")
    step "${p}dd_verify" dd_verify "$dev"
    step "${p}mkfs" fs_mkfs "$dev"
    step "${p}fs_write" fs_write "$dev"
    step "${p}fsck" fs_fsck "$dev"
    step "${p}fs_verify" fs_verify "$dev"
    step "${p}logout" node_logout "$portal"
    step "${p}disk_gone" disk_gone "$name" "$link"
}

first_portal() { set -- $GI_PORTALS; echo "$1"; }
second_portal() { set -- $GI_PORTALS; echo "$2"; }

# ---------------------------------------------------------------------------
# write stream: 1 MiB O_DIRECT+fsync writes, chunk i = pattern chunk (i % 64),
# to DEST/f<i> (MODE=files) or to offset i MiB of the device DEST (MODE=raw),
# until stream_stop. Every write's rc and duration are recorded.
# ---------------------------------------------------------------------------
STREAM_DIR=/run/gi/stream
stream_start() { # MODE DEST
    local mode=$1 dest=$2
    rm -rf "$STREAM_DIR"; mkdir -p "$STREAM_DIR"
    make_pattern /run/gi/pat64 64
    echo "$mode $dest" > "$STREAM_DIR/target"
    (
        i=0
        while [ ! -e "$STREAM_DIR/stop" ] && [ $i -lt "${GI_STREAM_MAX:-900}" ]; do
            t0=$(gi_now)
            if [ "$mode" = files ]; then of=$dest/f$i; seek=0; else of=$dest; seek=$i; fi
            if ! dd if=/run/gi/pat64 of="$of" bs=1M count=1 skip=$((i % 64)) seek=$seek \
                    oflag=direct conv=fsync,notrunc status=none 2>>"$STREAM_DIR/err"; then
                echo "$i" >> "$STREAM_DIR/failed"
            fi
            echo "$i $(gi_since "$t0") $(date +%s.%N)" >> "$STREAM_DIR/log"
            i=$((i + 1))
            echo $i > "$STREAM_DIR/count"
        done
    ) &
    STREAM_PID=$!
    echo "$STREAM_PID" > "$STREAM_DIR/pid"
    wait_for 120 stream_reached 5 || return 1
    STEP_DETAIL="writer pid $STREAM_PID, $(stream_count) MiB written so far"
}
stream_count() { cat "$STREAM_DIR/count" 2>/dev/null || echo 0; }
stream_reached() { [ "$(stream_count)" -ge "$1" ]; }
stream_failures() { [ -s "$STREAM_DIR/failed" ] && wc -l < "$STREAM_DIR/failed" || echo 0; }
stream_max_latency() { awk 'BEGIN{m=0} $2>m{m=$2} END{printf "%.2f", m}' "$STREAM_DIR/log"; }
# stream_progress N SECONDS: at least N more writes complete, none failing
stream_progress() {
    local n=$1 limit=$2 start; start=$(stream_count)
    wait_for "$limit" stream_reached $(( start + n )) || { echo "stream stuck at $(stream_count)"; return 1; }
    [ "$(stream_failures)" = 0 ] || { echo "write errors: $(cat "$STREAM_DIR/err")"; return 1; }
    STEP_DETAIL="$n more writes ($start -> $(stream_count)) without error, max latency $(stream_max_latency)s"
}
stream_finish() {
    touch "$STREAM_DIR/stop"
    wait "$(cat "$STREAM_DIR/pid")" 2>/dev/null
    local f; f=$(stream_failures)
    STEP_DETAIL="$(stream_count) writes, $f failed, max latency $(stream_max_latency)s"
    if [ "$f" != 0 ]; then
        echo "failed writes: $(tr '\n' ' ' < "$STREAM_DIR/failed")"
        tail -n 5 "$STREAM_DIR/err"
        return 1
    fi
}
# the bytes the stream wrote, in order: chunk i = pattern chunk (i % 64)
stream_expected() { # N
    local n=$1 r
    for ((r = 0; r <= n / 64; r++)); do cat /run/gi/pat64; done | head -c $(( n * 1048576 ))
}
stream_readback() { # MODE DEST N
    local i
    if [ "$1" = files ]; then
        for ((i = 0; i < $3; i++)); do cat "$2/f$i"; done
    else
        dd if="$2" bs=1M count="$3" iflag=direct status=none
    fi
}
stream_verify() {
    local mode dest n out
    read -r mode dest < "$STREAM_DIR/target"
    n=$(stream_count)
    sync; echo 3 > /proc/sys/vm/drop_caches
    if out=$(cmp <(stream_readback "$mode" "$dest" "$n") <(stream_expected "$n") 2>&1); then
        STEP_DETAIL="$n MiB verified ($mode)"
        return 0
    fi
    echo "$out"
    local off; off=$(echo "$out" | sed -n 's/.*differ: byte \([0-9]*\).*/\1/p')
    [ -n "$off" ] && STEP_DETAIL="first difference in chunk $(( (off - 1) / 1048576 )) of $n"
    return 1
}
