#!/bin/bash
# HA scenario (tests/guest/test_multipath.py): one group LUN through two gateways of a
# gateway group (docs/HA.md), each in its own network namespace on the host; the guest
# reaches them through QEMU's user networking (outbound NAT to 192.0.2.1N). dm-multipath
# with the ALUA handler and priorities must build one device whose active path group is
# the owner's (GI_OWNER_PORTAL, prio 50); the other gateway's path is in the enabled group
# (GI_NON_OWNER=non-optimized, the default: active/non-optimized, prio 10) or standing by
# (GI_NON_OWNER=standby: ghost). Then a planned `lun move` during a write stream (when
# GI_MOVE=1), SIGKILL of the owner during the stream, and (GI_PR=1) a fence_scsi sequence
# with sg_persist: this guest (node A) registers on both paths and reserves, node B (the
# host, another initiator name) preempts and aborts A's key, A's writes then fail with
# RESERVATION CONFLICT on both paths.
. /run/gi/env.sh
. /run/gi/lib.sh
P1=$(first_portal)
P2=$(second_portal)

iscsid_conf_set node.session.timeo.replacement_timeout 5
iscsid_conf_set 'node.conn[0].timeo.noop_out_interval' 2
iscsid_conf_set 'node.conn[0].timeo.noop_out_timeout' 2

# ALUA priorities, grouped by priority (the kernel attaches scsi_dh_alua itself to a TPGS
# device; multipath-tools 0.9 refuses hardware_handler in overrides)
cat > /etc/multipath.conf <<'CONF'
defaults {
    user_friendly_names yes
    find_multipaths off
    polling_interval 2
}
blacklist {
    devnode "^(vd|sr|fd|loop|ram)[a-z0-9]*"
}
overrides {
    prio alua
    path_grouping_policy group_by_prio
    path_checker tur
    failback immediate
    no_path_retry 30
}
CONF

start_multipathd() {
    multipathd -d -s > /run/gi/multipathd.log 2>&1 &
    wait_for 30 multipathd show daemon
}
path_of() { readlink -f "$(lun_link "$1")"; }

login_all() {
    iscsiadm --mode node --targetname "$GI_TARGET_IQN" --portal "$P1" --login || return 1
    iscsiadm --mode node --targetname "$GI_TARGET_IQN" --portal "$P2" --login || return 1
    iscsiadm -m session
}

paths_appear() {
    wait_for 60 test -b "$(lun_link "$P1")" || { ls -l /dev/disk/by-path/; return 1; }
    wait_for 60 test -b "$(lun_link "$P2")" || { ls -l /dev/disk/by-path/; return 1; }
    udevadm settle --timeout=20
    D1=$(path_of "$P1"); D2=$(path_of "$P2"); N1=$(basename "$D1"); N2=$(basename "$D2")
    if [ "$P1" = "$GI_OWNER_PORTAL" ]; then NO=$N1; NS=$N2; else NO=$N2; NS=$N1; fi
    lsblk -o NAME,SIZE,TYPE,TRAN,VENDOR,MODEL,SERIAL
    sg_rtpg -d "$D1"; sg_rtpg -d "$D2"
    STEP_DETAIL="$N1 via $P1, $N2 via $P2; owner path $NO"
}

same_wwid() {
    local w1 w2
    w1=$(/lib/udev/scsi_id -g -u -d "$D1"); w2=$(/lib/udev/scsi_id -g -u -d "$D2")
    [ -n "$w1" ] && [ "$w1" = "$w2" ] || { echo "WWIDs: '$w1' vs '$w2'"; return 1; }
    WWID=$w1
    STEP_DETAIL="WWID $WWID on both paths"
}

alua_handler() {
    local h1 h2
    h1=$(cat /sys/block/"$N1"/device/dh_state 2>/dev/null)
    h2=$(cat /sys/block/"$N2"/device/dh_state 2>/dev/null)
    echo "dh_state: $N1=$h1 $N2=$h2"
    [ "$h1" = alua ] && [ "$h2" = alua ] && STEP_DETAIL="scsi_dh_alua on both paths"
}

GI_NON_OWNER=${GI_NON_OWNER:-non-optimized}
# what the non-owner's path shows in `multipathd show paths` "%d %t %T %p"
if [ "$GI_NON_OWNER" = standby ]; then
    non_owner_path() { multipathd show paths raw format "%d %T" | grep -Eq "^$1 ghost"; }
else
    non_owner_path() { multipathd show paths raw format "%d %t %T %p" | grep -Eq "^$1 active ready 10"; }
fi
one_map_owner_active() {
    MAP=$(multipathd show maps raw format "%n %w" | awk -v w="$WWID" '$2 == w {print $1}')
    [ -n "$MAP" ] || return 1
    [ "$(multipathd show maps raw format '%w' | grep -c "^$WWID\$")" -eq 1 ] || return 1
    # the owner's path in the active group (prio 50: active/optimized), the other's prio 10
    # (active/non-optimized) or ghost (standby)
    multipathd show paths raw format "%d %t %T %p" | grep -Eq "^$NO active ready 50" || return 1
    non_owner_path "$NS"
}
alua_states() { # what scsi_dh_alua reports for each path (access_state, preferred)
    local n
    for n in "$N1" "$N2"; do
        echo "$n: $(cat /sys/block/$n/device/access_state 2>/dev/null)" \
             "pref=$(cat /sys/block/$n/device/preferred_path 2>/dev/null)"
    done | tr '\n' ';'
}

coalesces() {
    wait_for 90 one_map_owner_active || {
        multipath -ll; multipathd show paths raw format "%d %t %T %p"
        tail -20 /run/gi/multipathd.log; return 1; }
    multipath -ll
    MAPDEV=/dev/mapper/$MAP
    wait_for 20 test -b "$MAPDEV" || return 1
    STEP_DETAIL="one map $MAP ($WWID): $NO active (prio 50), $NS $GI_NON_OWNER; scsi_dh_alua: $(alua_states)"
}

io_through_map() {
    make_pattern /run/gi/pattern 8 || return 1
    dd if=/run/gi/pattern of="$MAPDEV" bs=1M oflag=direct conv=fsync status=none || return 1
    dd if="$MAPDEV" of=/run/gi/readback bs=1M count=8 iflag=direct status=none || return 1
    cmp /run/gi/pattern /run/gi/readback && STEP_DETAIL="8 MiB written and read back"
}

other_active() { # after the owner's death: the other gateway's path is active/optimized
    multipathd show paths raw format "%d %t %T %p" | grep -Eq "^$NS active ready 50"
}
failover() {
    wait_for 180 other_active || { multipathd show paths raw format "%d %t %T %p"; return 1; }
    multipathd show paths raw format "%d %t %T %p"
    STEP_DETAIL="$NS active (prio 50); stream at $(stream_count) MiB, max latency $(stream_max_latency)s"
}
owner_path_back() { # the returned gateway is a non-owner now: its path back, not failed
    non_owner_path "$NO"
}

# planned move of the LUN to the other gateway during the stream: the other path turns
# prio 50, the old owner's the non-owner's; the time is the guest's from the request to
# seeing that, and the stream must not fail
moved() { other_active && non_owner_path "$NO"; }
move_lun() {
    local t0; t0=$(gi_now)
    MOVE_AT=$(( $(stream_count) - 1 ))
    hostcmd move-lun || return 1
    wait_for 120 moved || { multipathd show paths raw format "%d %t %T %p"; return 1; }
    local took; took=$(gi_since "$t0")
    multipathd show paths raw format "%d %t %T %p"
    local t; t=$NO; NO=$NS; NS=$t  # the owner is the other gateway now
    STEP_DETAIL="move seen after ${took}s; stream at $(stream_count) MiB, max latency $(stream_max_latency)s; $(alua_states)"
}

# the longest write that started at or after stream write N (the stream log: i duration end)
max_latency_since() { awk -v n="$1" 'BEGIN{m=0} $1>=n && $2>m{m=$2} END{printf "%.2f", m}' "$STREAM_DIR/log"; }
kill_owner() { KILL_AT=$(( $(stream_count) - 1 )); hostcmd kill-owner; }
figures() {
    STEP_DETAIL="longest write from the SIGKILL on (kill to I/O resuming): $(max_latency_since "$KILL_AT")s${MOVE_AT:+; during the move: $(awk -v a="$MOVE_AT" -v b="$KILL_AT" 'BEGIN{m=0} $1>=a && $1<b && $2>m{m=$2} END{printf "%.2f", m}' "$STREAM_DIR/log")s}"
}

# fence_scsi's sequence (type 5, write exclusive registrants only)
KEY_A=0xa1
pr_register_reserve() {
    sg_persist --out --register --param-sark=$KEY_A "$D1" || return 1
    sg_persist --out --register --param-sark=$KEY_A "$D2" || return 1
    sg_persist --out --reserve --param-rk=$KEY_A --prout-type=5 "$D1" || return 1
    sg_persist --in --read-keys "$D2"; sg_persist --in --read-reservation "$D2"
    write_one "$D1" && write_one "$D2" || { echo "registered writes failed"; return 1; }
    STEP_DETAIL="key $KEY_A on both paths, reserved type 5; writes through both paths GOOD"
}
write_one() { # DEV: one WRITE(10) of LBA 2048 through SG_IO; its output has the status
    head -c 512 /dev/zero > /run/gi/blk
    sg_raw -s 512 -i /run/gi/blk "$1" 2a 00 00 00 08 00 00 00 01 00 2>&1
}
conflict_on() { # past the unit attention the preemption queues (2A/05 registrations preempted)
    local i
    for i in 1 2 3 4 5; do
        write_one "$1" > /run/gi/sgraw.out; cat /run/gi/sgraw.out
        grep -qi "unit attention" /run/gi/sgraw.out || break
        grep -qi "preempted" /run/gi/sgraw.out && UA_SEEN="$UA_SEEN $(basename "$1")"
    done
    grep -qi "reservation conflict" /run/gi/sgraw.out
}
pr_fenced() {
    UA_SEEN=""
    sg_persist --in --read-keys "$D1" | tee /run/gi/keys.out
    grep -qi "$KEY_A" /run/gi/keys.out && { echo "key A still registered"; return 1; }
    conflict_on "$D1" || return 1
    conflict_on "$D2" || return 1
    STEP_DETAIL="A's key gone; WRITE through $N1 and $N2: RESERVATION CONFLICT (registrations preempted UA first on:${UA_SEEN:- none})"
}
reinstated() {
    wait_for 180 owner_path_back || { multipathd show paths raw format "%d %t %T %p"; return 1; }
    multipath -ll
    STEP_DETAIL="$(multipathd show paths raw format '%d %t %T %p' | tr '\n' ';')"
}

step multipathd_started start_multipathd
step discovery1 discover "$P1"
step discovery2 discover "$P2"
step login login_all
step paths_appear paths_appear
step same_wwid same_wwid
step alua_handler alua_handler
step owner_group_active coalesces
step io io_through_map
# SIGKILL of the owner during a write stream (1 MiB O_DIRECT+fsync writes, no flush first)
step stream_started stream_start raw "$MAPDEV"
if [ "${GI_MOVE:-0}" = 1 ]; then
    step lun_move move_lun
    step io_after_move stream_progress 5 120
fi
step kill_owner kill_owner
step failover failover
step io_continues stream_progress 10 180
step restart_owner hostcmd restart-owner
step path_reinstated reinstated
step io_after_return stream_progress 5 120
step stream_clean stream_finish
step data_verifies stream_verify
step figures figures
if [ "${GI_PR:-0}" = 1 ]; then
    step pr_reserved pr_register_reserve
    step pr_preempt hostcmd preempt-abort "$KEY_A"
    step pr_fenced pr_fenced
    step pr_cleared hostcmd pr-clear
fi
result done PASS 0 "hamultipath complete"
