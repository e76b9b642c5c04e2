#!/bin/bash
# HA scenario (tests/guest/test_multipath.py): one group LUN through two gateways of a
# gateway group (docs/HA.md), each in its own network namespace on the host; the guest
# reaches them through QEMU's user networking (outbound NAT to 192.0.2.1N). dm-multipath
# with the ALUA handler and priorities must build one device whose active path group is
# the owner's (GI_OWNER_PORTAL), the other gateway's path standing by (ghost).
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

one_map_owner_active() {
    MAP=$(multipathd show maps raw format "%n %w" | awk -v w="$WWID" '$2 == w {print $1}')
    [ -n "$MAP" ] || return 1
    [ "$(multipathd show maps raw format '%w' | grep -c "^$WWID\$")" -eq 1 ] || return 1
    # the owner's path in the active group (prio 50: active/optimized), the other ghost
    multipathd show paths raw format "%d %t %T %p" | grep -Eq "^$NO active ready 50" || return 1
    multipathd show paths raw format "%d %T" | grep -Eq "^$NS ghost"
}

coalesces() {
    wait_for 90 one_map_owner_active || {
        multipath -ll; multipathd show paths raw format "%d %t %T %p"
        tail -20 /run/gi/multipathd.log; return 1; }
    multipath -ll
    MAPDEV=/dev/mapper/$MAP
    wait_for 20 test -b "$MAPDEV" || return 1
    STEP_DETAIL="one map $MAP ($WWID): $NO active (prio 50), $NS ghost (standby)"
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
owner_path_back() { # the returned gateway is a standby now: its path ready again, not failed
    multipathd show paths raw format "%d %t %T %p" | grep -Eq "^$NO (active|ghost) (ready|ghost)"
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
step kill_owner hostcmd kill-owner
step failover failover
step io_continues stream_progress 10 180
step restart_owner hostcmd restart-owner
step path_reinstated reinstated
step io_after_return stream_progress 5 120
step stream_clean stream_finish
step data_verifies stream_verify
result done PASS 0 "hamultipath complete"
