#!/bin/bash
# Scenario 4: the target daemon is restarted (by the host) during a write
# stream; the kernel initiator must recover the session within its
# replacement_timeout (GI_REPLACEMENT_TIMEOUT, iscsid.conf), no write may fail,
# and every byte written must verify.
. /run/gi/env.sh
. /run/gi/lib.sh
P=$(first_portal)
iscsid_conf_set 'node.conn[0].timeo.noop_out_interval' 5
iscsid_conf_set 'node.conn[0].timeo.noop_out_timeout' 5
RT=${GI_REPLACEMENT_TIMEOUT:-120}

session_line() { iscsiadm -m session -P 1 | grep -E 'SID|Session State|Connection State' | tr -s ' \t\n' ' '; }

restart_target() {
    SID_BEFORE=$(iscsiadm -m session | awk '{gsub(/[][]/, "", $2); print $2}')
    dmesg -c > /dev/null
    T_RESTART=$(gi_now)
    COUNT_AT_RESTART=$(stream_count)
    hostcmd "${GI_RESTART_ACTION:-restart-target}" || return 1
    STEP_DETAIL="host: ${HOSTREPLY#OK }"
}

recovered() {
    iscsiadm -m session -P 1 | grep -q 'iSCSI Session State: LOGGED_IN' \
        && [ "$(stream_count)" -gt $(( COUNT_AT_RESTART + 2 )) ]
}
session_recovered() {
    wait_for "$RT" recovered || { session_line; dmesg | tail -20; return 1; }
    local secs; secs=$(gi_since "$T_RESTART")
    dmesg | grep -iE 'iscsi|connection' | tail -n 10
    session_line
    local sid; sid=$(iscsiadm -m session | awk '{gsub(/[][]/, "", $2); print $2}')
    [ "$sid" = "$SID_BEFORE" ] || { echo "session $SID_BEFORE replaced by $sid (not recovered)"; return 1; }
    # the connection must really have dropped, or nothing was tested
    dmesg | grep -q 'detected conn error' || { echo "no connection error seen: was the target restarted?"; return 1; }
    [ "$(stream_failures)" = 0 ] || { echo "write errors: $(cat "$STREAM_DIR/err")"; return 1; }
    STEP_DETAIL="session $sid back in ${secs}s (replacement_timeout ${RT}s), writes resumed, max write latency $(stream_max_latency)s"
}

cookbook_start() {
    step discovery discover "$P"
    step login node_login "$P"
    step disk_appears disk_appears "$P"
}
cookbook_start
DEVNAME0=$DEVNAME DEV0=$DEV
step stream_started stream_start raw "$DEV0"
step restart_target restart_target
step session_recovered session_recovered
step io_after_recovery stream_progress 10 60
step stream_clean stream_finish
step data_verifies stream_verify
step logout node_logout "$P"
step disk_gone disk_gone "$DEVNAME0" "$(lun_link "$P")"
result done PASS 0 "session recovery complete"
