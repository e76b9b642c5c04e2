#!/bin/bash
# Scenario 3: the same LUN through two portals, coalesced by multipathd.
# Path 2's portal is stopped on the host in the middle of a write stream on an
# ext4 filesystem on the multipath device; I/O must continue on path 1 without
# an error, the path must come back when the portal returns, and every byte
# written must verify.
. /run/gi/env.sh
. /run/gi/lib.sh
P1=$(first_portal)
P2=$(second_portal)

# iSCSI settings for multipath (iscsid.conf style, before discovery): a short
# replacement_timeout hands a dead path's I/O to dm-multipath quickly; NOP-Outs
# detect a silent path.
iscsid_conf_set node.session.timeo.replacement_timeout "${GI_MP_REPLACEMENT_TIMEOUT:-5}"
iscsid_conf_set 'node.conn[0].timeo.noop_out_interval' 2
iscsid_conf_set 'node.conn[0].timeo.noop_out_timeout' 2

cat > /etc/multipath.conf <<'CONF'
defaults {
    user_friendly_names yes
    find_multipaths off
    polling_interval 2
    failback immediate
}
blacklist {
    devnode "^(vd|sr|fd|loop|ram)[a-z0-9]*"
}
overrides {
    path_grouping_policy multibus
    path_selector "round-robin 0"
    rr_min_io_rq 1
    no_path_retry 30
}
CONF

start_multipathd() {
    multipathd -d -s > /run/gi/multipathd.log 2>&1 &
    wait_for 30 multipathd show daemon
}

path_of() { readlink -f "$(lun_link "$1")"; }
sid_of() { # PORTAL -> iSCSI session id
    iscsiadm -m session | awk -v p="$1" '$3 ~ "^" p "," { gsub(/[][]/, "", $2); print $2 }'
}

login_all() {
    iscsiadm --mode node --targetname "$GI_TARGET_IQN" --login || return 1
    iscsiadm -m session
    [ "$(iscsiadm -m session | grep -c "$GI_TARGET_IQN")" -eq 2 ] || { echo "expected 2 sessions"; return 1; }
}

paths_appear() {
    wait_for 60 test -b "$(lun_link "$P1")" || return 1
    wait_for 60 test -b "$(lun_link "$P2")" || return 1
    udevadm settle --timeout=20
    D1=$(path_of "$P1"); D2=$(path_of "$P2")
    N1=$(basename "$D1"); N2=$(basename "$D2")
    lsblk -o NAME,SIZE,TYPE,TRAN,VENDOR,MODEL,SERIAL
    [ "$D1" != "$D2" ] || { echo "both portals gave the same device?"; return 1; }
    STEP_DETAIL="path1 $N1 via $P1, path2 $N2 via $P2"
}

same_wwid() {
    local w1 w2 v1 v2
    w1=$(/lib/udev/scsi_id -g -u -d "$D1"); w2=$(/lib/udev/scsi_id -g -u -d "$D2")
    v1=$(sg_vpd -p di "$D1"); v2=$(sg_vpd -p di "$D2")
    echo "VPD 83h via $N1:"; echo "$v1"
    echo "VPD 83h via $N2:"; echo "$v2"
    [ -n "$w1" ] || { echo "no WWID on $N1"; return 1; }
    [ "$w1" = "$w2" ] || { echo "WWIDs differ: $w1 vs $w2"; return 1; }
    [ "$v1" = "$v2" ] || { echo "VPD 83h designators differ"; return 1; }
    WWID=$w1
    STEP_DETAIL="WWID $WWID on both paths"
}

map_ready() { # the map for $WWID has 2 paths, both active/ready
    MAP=$(multipathd show maps raw format "%n %w" | awk -v w="$WWID" '$2 == w {print $1}')
    [ -n "$MAP" ] || return 1
    [ "$(path_states | grep -c ' active ready')" -eq 2 ]
}
path_states() { multipathd show paths raw format "%d %w %t %T" | awk -v w="$WWID" '$2 == w {print $1, $3, $4}'; }
path_state() { path_states | awk -v d="$1" '$1 == d {print $2, $3}'; }

coalesces() {
    wait_for 60 map_ready || { multipath -ll; path_states; tail -20 /run/gi/multipathd.log; return 1; }
    multipath -ll
    MAPDEV=/dev/mapper/$MAP
    wait_for 20 test -b "$MAPDEV" || return 1
    STEP_DETAIL="$MAP ($WWID) = $N1 + $N2, both active ready"
}

path2_failed() {
    wait_for 60 sh -c "multipathd show paths raw format '%d %t %T' | grep -Eq '^$N2 failed'" \
        || { path_states; return 1; }
    path_states
    multipath -ll
    iscsiadm -m session -P 1 | grep -E 'Current Portal|Session State|Connection State'
    STEP_DETAIL="$N2: $(path_state "$N2"); $N1: $(path_state "$N1")"
}

path2_reinstated() {
    wait_for 180 map_ready || { path_states; iscsiadm -m session -P 1; return 1; }
    path_states
    iscsiadm -m session -P 1 | grep -E 'Current Portal|Session State|Connection State'
    STEP_DETAIL="$N2: $(path_state "$N2"); $N1: $(path_state "$N1")"
}

mp_mkfs() { mkfs.ext4 -F -q "$MAPDEV" && mount "$MAPDEV" /mnt/gi && mkdir -p /mnt/gi/s \
            && STEP_DETAIL="ext4 on $MAPDEV mounted"; }

mp_fsck() { umount /mnt/gi && fsck.ext4 -fn "$MAPDEV"; }

mp_verify() {
    mount "$MAPDEV" /mnt/gi || return 1
    stream_verify; local rc=$?
    umount /mnt/gi
    return $rc
}

logout_all() {
    multipath -f "$MAP" || { sleep 2; multipath -f "$MAP"; } || return 1
    iscsiadm --mode node --targetname "$GI_TARGET_IQN" -u
}
disks_gone() {
    wait_for 30 sh -c "! test -e /sys/block/$N1 && ! test -e /sys/block/$N2" || return 1
    if lsblk -dno NAME | grep -Eqx "$N1|$N2"; then echo "lsblk still lists them"; return 1; fi
    STEP_DETAIL="$N1 and $N2 gone"
}

step multipathd_started start_multipathd
step discovery1 discover "$P1"
step discovery2 discover "$P2"
step login login_all
step paths_appear paths_appear
step same_wwid same_wwid
step multipathd_coalesces coalesces
step mkfs mp_mkfs
step stream_started stream_start files /mnt/gi/s
step stop_portal hostcmd stop-portal 2
step path_failed path2_failed
step io_continues stream_progress 10 120
step start_portal hostcmd start-portal 2
step path_reinstated path2_reinstated
step io_after_reinstate stream_progress 5 60
step stream_clean stream_finish
step fsck mp_fsck
step data_verifies mp_verify
step logout logout_all
step disks_gone disks_gone
result done PASS 0 "multipath complete"
