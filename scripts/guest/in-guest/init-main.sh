#!/bin/bash
# Stage-2 init of the test guest: runs from the per-run bundle (/run/gi).
# Brings up udev, eth0 (10.0.2.15/24 via 10.0.2.2, QEMU user networking),
# the host control channel, iscsi_tcp/dm-multipath and iscsid, then runs
# scenario-$GI_SCENARIO.sh. Results are `RESULT <name> PASS|FAIL <sec> <detail>`
# lines on the serial console; the guest powers off when this script returns.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LANG=C LC_ALL=C
cd /run/gi || exit 1
. ./env.sh
. ./lib.sh

gi_log "stage2: kernel $(uname -r), scenario ${GI_SCENARIO}"
T0=$(gi_now)

# --- udev -----------------------------------------------------------------
UDEVD=/lib/systemd/systemd-udevd
[ -x "$UDEVD" ] || UDEVD=/usr/lib/systemd/systemd-udevd
"$UDEVD" --daemon --resolve-names=never
udevadm trigger --action=add --type=subsystems
udevadm trigger --action=add --type=devices
udevadm settle --timeout=30

# --- network --------------------------------------------------------------
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2

# --- host control channel (virtio-serial port "gi.ctl") -------------------
modprobe virtio_console 2>/dev/null
CTL=
for i in $(seq 1 50); do
    if [ -e /dev/virtio-ports/gi.ctl ]; then CTL=/dev/virtio-ports/gi.ctl; break; fi
    for n in /sys/class/virtio-ports/vport*/name; do
        [ -r "$n" ] && [ "$(cat "$n")" = gi.ctl ] && CTL=/dev/$(basename "$(dirname "$n")")
    done
    [ -n "$CTL" ] && break
    sleep 0.2
done
if [ -n "$CTL" ]; then
    exec 7<>"$CTL"
    export GI_CTL=$CTL
else
    gi_log "WARNING: no control channel; HOSTCMD steps will fail"
fi

# --- iSCSI initiator --------------------------------------------------------
modprobe iscsi_tcp
modprobe dm_multipath 2>/dev/null
modprobe dm_round_robin 2>/dev/null
echo "InitiatorName=${GI_INITIATOR_NAME}" > /etc/iscsi/initiatorname.iscsi
mkdir -p /run/lock/iscsi /etc/iscsi/nodes /etc/iscsi/send_targets /mnt/gi
# test-wide initiator defaults (scenarios add more in iscsid.conf style)
iscsid_conf_set node.startup manual
iscsid_conf_set node.session.timeo.replacement_timeout "${GI_REPLACEMENT_TIMEOUT:-120}"
# foreground so that its log (no syslog here) lands in a file we can show
iscsid -f > /run/gi/iscsid.log 2>&1 &
for i in $(seq 1 50); do
    iscsiadm -m session >/dev/null 2>&1; rc=$?
    # 21 = no sessions: iscsid answers
    { [ $rc -eq 0 ] || [ $rc -eq 21 ]; } && break
    sleep 0.2
done
gi_log "stage2: setup done in $(gi_since "$T0") s"
echo "RESULT ${GI_SCENARIO}.boot PASS $(gi_since "$T0") kernel=$(uname -r)"

# --- the scenario -----------------------------------------------------------
timeout --kill-after=10 "${GI_SCENARIO_TIMEOUT:-900}" \
    bash "/run/gi/scenario-${GI_SCENARIO}.sh"
rc=$?
if [ $rc -ne 0 ]; then
    gi_log "scenario exited with $rc; kernel log tail follows"
    echo "GI DMESG BEGIN"
    dmesg | tail -n 80
    echo "GI DMESG END"
    echo "GI ISCSID LOG BEGIN"
    tail -n 60 /run/gi/iscsid.log
    echo "GI ISCSID LOG END"
fi
echo "GI DONE ${GI_SCENARIO} rc=$rc"
exit $rc
