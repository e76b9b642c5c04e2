#!/usr/bin/env bash
# A throw-away GlusterFS volume on local bricks, for tests and benchmarks (no systemd needed).
#
#   scripts/gluster-env.sh start  [VOLUME [WORKDIR]]   glusterd + replica-3 volume (+ FUSE mount)
#   scripts/gluster-env.sh stop   [VOLUME [WORKDIR]]   unmount, stop/delete volume, stop glusterd
#   scripts/gluster-env.sh status [VOLUME [WORKDIR]]   exit 0 if the volume is started
#
# Environment (arguments win):
#   GLUSTER_VOLUME   volume name                        (default: giscsi)
#   GLUSTER_WORKDIR  bricks, logs, pid file, mountpoint  (default: /var/tmp/gluster-iscsi-env)
#   GLUSTER_REPLICA  replica count, one brick each       (default: 3)
#   GLUSTER_MOUNT    1 to FUSE-mount at WORKDIR/mnt/VOLUME (default: 1)
#   GLUSTER_TIMEOUT  seconds to wait for each step       (default: 60)
#   GLUSTER_PROFILE  block: apply the gluster-block group (sharded; the default)
#                    plain: no option group (unsharded; SEEK_DATA/SEEK_HOLE work)
#   GLUSTER_BRICK_HOST  the address the bricks are created on and clients are told to use
#                    (default: the host name). Clients in network namespaces cannot reach the
#                    host name (it resolves to 127.0.0.1): give a local address they can reach,
#                    e.g. the host end of their veths (tests/ha). HOST then prints this address.
#
# Idempotent: start on a running environment only fills in what is missing; stop on a stopped
# one does nothing. glusterd is stopped only if this script started it (its pid file lives in
# WORKDIR) and no other volume remains. On success start prints shell-parsable lines:
#   VOLUME=... HOST=127.0.0.1 MOUNT=... WORKDIR=...
set -euo pipefail

cmd=${1:-status}
VOLUME=${2:-${GLUSTER_VOLUME:-giscsi}}
WORKDIR=${3:-${GLUSTER_WORKDIR:-/var/tmp/gluster-iscsi-env}}
REPLICA=${GLUSTER_REPLICA:-3}
MOUNT=${GLUSTER_MOUNT:-1}
TIMEOUT=${GLUSTER_TIMEOUT:-60}
PROFILE=${GLUSTER_PROFILE:-block}
BRICK_HOST=${GLUSTER_BRICK_HOST:-$(hostname)}
if [[ -n ${GLUSTER_BRICK_HOST:-} ]]; then HOST=$GLUSTER_BRICK_HOST; else HOST=127.0.0.1; fi
MNT="$WORKDIR/mnt/$VOLUME"
PIDFILE="$WORKDIR/glusterd.pid"
G=(gluster --mode=script)

log() { echo "gluster-env: $*" >&2; }
die() { log "error: $*"; exit 1; }
# Exit status 3 means "glusterd cannot run here" (callers may skip), anything else a failure.
unavailable() { log "unavailable: $*"; exit 3; }

# A mutating gluster command, retried while another session holds glusterd's cluster lock
# ("Another transaction is in progress"); other failures are returned at once.
gcli() {
    local out rc deadline=$((SECONDS + TIMEOUT))
    while :; do
        rc=0
        out=$("${G[@]}" "$@" 2>&1) || rc=$?
        if ((rc == 0)); then
            echo "$out" >&2
            return 0
        fi
        if ! grep -qiE 'another transaction|locking failed|lock.*held|try again' <<<"$out" \
            || ((SECONDS >= deadline)); then
            echo "$out" >&2
            return "$rc"
        fi
        sleep 1
    done
}

glusterd_answers() { timeout 10 "${G[@]}" pool list >/dev/null 2>&1; }
volume_exists() { timeout 20 "${G[@]}" volume info "$VOLUME" >/dev/null 2>&1; }
volume_started() {
    timeout 20 "${G[@]}" volume info "$VOLUME" 2>/dev/null | grep -q '^Status: Started'
}
is_mounted() { grep -qs " $MNT fuse.glusterfs " /proc/mounts; }
online_bricks() {
    # From the XML status: nodes whose <path> is a brick directory and whose <status> is 1.
    timeout 20 "${G[@]}" volume status "$VOLUME" --xml 2>/dev/null | awk '
        /<path>\//  { brick = 1 }
        /<path>[^\/]/ { brick = 0 }
        /<status>1<\/status>/ { if (brick) n++; brick = 0 }
        END { print n + 0 }'
}

wait_for() {  # wait_for DESCRIPTION COMMAND...
    local what=$1; shift
    local deadline=$((SECONDS + TIMEOUT))
    until "$@"; do
        ((SECONDS < deadline)) || die "timed out after ${TIMEOUT}s waiting for $what"
        sleep 0.5
    done
}

bricks_online() { [[ $(online_bricks) -ge $REPLICA ]]; }

start_glusterd() {
    if glusterd_answers; then
        return
    fi
    command -v glusterd >/dev/null || unavailable "glusterd not installed (apt-get install glusterfs-server)"
    command -v gluster >/dev/null || unavailable "gluster CLI not installed"
    mkdir -p "$WORKDIR"
    log "starting glusterd (log $WORKDIR/glusterd.log)"
    glusterd -p "$PIDFILE" --log-file="$WORKDIR/glusterd.log" \
        || unavailable "glusterd failed to start; see $WORKDIR/glusterd.log"
    local deadline=$((SECONDS + TIMEOUT))
    until glusterd_answers; do
        ((SECONDS < deadline)) || unavailable "glusterd not answering after ${TIMEOUT}s; see $WORKDIR/glusterd.log"
        sleep 0.5
    done
}

do_start() {
    [[ $PROFILE == block || $PROFILE == plain ]] || die "GLUSTER_PROFILE must be block or plain"
    start_glusterd
    if ! volume_exists; then
        local bricks=() i
        for ((i = 1; i <= REPLICA; i++)); do
            mkdir -p "$WORKDIR/bricks/$VOLUME/b$i"
            bricks+=("$BRICK_HOST:$WORKDIR/bricks/$VOLUME/b$i")
        done
        log "creating volume $VOLUME (replica $REPLICA)"
        if ((REPLICA > 1)); then
            gcli volume create "$VOLUME" replica "$REPLICA" "${bricks[@]}" force
        else
            gcli volume create "$VOLUME" "${bricks[@]}" force
        fi
        if [[ $PROFILE == block ]]; then
            # Block workloads: the gluster-block option group (sharding, eager-lock, quorum,
            # strict O_DIRECT, caches off). Write-behind stays on: shard relies on it.
            gcli volume set "$VOLUME" group gluster-block
            gcli volume set "$VOLUME" performance.write-behind on
            # Upcalls: a write by another client invalidates the gfapi read cache.
            gcli volume set "$VOLUME" features.cache-invalidation on
        fi
    fi
    if ! volume_started; then
        log "starting volume $VOLUME"
        gcli volume start "$VOLUME" force
    fi
    wait_for "$REPLICA bricks of $VOLUME to come online" bricks_online
    if [[ $MOUNT == 1 ]] && ! is_mounted; then
        mkdir -p "$MNT"
        log "mounting $HOST:/$VOLUME on $MNT"
        local deadline=$((SECONDS + TIMEOUT))
        until mount -t glusterfs -o log-file="$WORKDIR/mnt.log" "$HOST:/$VOLUME" "$MNT" \
            && is_mounted; do
            ((SECONDS < deadline)) || die "could not FUSE-mount $VOLUME; see $WORKDIR/mnt.log"
            sleep 1
        done
    fi
    echo "VOLUME=$VOLUME"
    echo "HOST=$HOST"
    if is_mounted; then echo "MOUNT=$MNT"; else echo "MOUNT="; fi
    echo "WORKDIR=$WORKDIR"
}

kill_pidfile() {  # kill_pidfile FILE: stop the process recorded there, then forget it
    local f=$1 pid
    [[ -f $f ]] || return 0
    pid=$(cat "$f" 2>/dev/null || true)
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
}

do_stop() {
    if is_mounted; then
        log "unmounting $MNT"
        umount "$MNT" 2>/dev/null || umount -l "$MNT" || true
    fi
    if glusterd_answers && volume_exists; then
        log "stopping and deleting volume $VOLUME"
        gcli volume stop "$VOLUME" force || true
        gcli volume delete "$VOLUME" || true
        ! volume_exists || die "volume $VOLUME could not be deleted"
    fi
    # Brick processes of our volume (glusterd normally stops them on volume stop).
    local f
    for f in /var/run/gluster/vols/"$VOLUME"/*.pid /run/gluster/vols/"$VOLUME"/*.pid; do
        [[ -e $f ]] && kill_pidfile "$f"
    done
    if [[ -f $PIDFILE ]]; then
        local others
        others=$(timeout 10 "${G[@]}" volume list 2>/dev/null | grep -v '^No volumes present' || true)
        if [[ -z $others ]]; then
            log "stopping glusterd"
            kill_pidfile "$PIDFILE"
            # The self-heal and quota daemons glusterd spawned for our volumes.
            for f in /var/run/gluster/shd/*/*.pid /var/run/gluster/*.pid; do
                [[ -e $f ]] && kill_pidfile "$f"
            done
        else
            log "glusterd left running: other volumes exist ($others)"
        fi
    fi
    rm -rf "${WORKDIR:?}/bricks/$VOLUME"
    rmdir "$MNT" "$WORKDIR/mnt" 2>/dev/null || true
}

do_status() {
    if ! glusterd_answers; then
        echo "glusterd: not answering"
        return 1
    fi
    echo "glusterd: running"
    if ! volume_exists; then
        echo "volume $VOLUME: absent"
        return 1
    fi
    if volume_started; then
        echo "volume $VOLUME: started, $(online_bricks) brick(s) online"
    else
        echo "volume $VOLUME: stopped"
    fi
    if is_mounted; then echo "mount: $MNT"; else echo "mount: none"; fi
    volume_started
}

case $cmd in
    start) do_start ;;
    stop) do_stop ;;
    status) do_status ;;
    *)
        echo "usage: $0 start|stop|status [VOLUME [WORKDIR]]" >&2
        exit 2
        ;;
esac
