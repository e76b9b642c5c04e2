#!/bin/bash
# Scenario 2: the cookbook with CHAP, then with mutual CHAP, both configured the
# way an admin does it: node.session.auth.* in /etc/iscsi/iscsid.conf before
# discovery (new node records inherit them). The host has configured the target
# with the initiator account GI_CHAP_USER/GI_CHAP_SECRET and the target's own
# (mutual) account GI_MUTUAL_USER/GI_MUTUAL_SECRET before the guest booted.
. /run/gi/env.sh
. /run/gi/lib.sh
PORTAL=$(first_portal)

forget_nodes() { iscsiadm -m node -o delete >/dev/null 2>&1; iscsiadm -m discoverydb -o delete -t sendtargets -p "$PORTAL" >/dev/null 2>&1; true; }

auth_none() {
    iscsid_conf_unset node.session.auth.authmethod
    iscsid_conf_unset node.session.auth.username
    iscsid_conf_unset node.session.auth.password
    iscsid_conf_unset node.session.auth.username_in
    iscsid_conf_unset node.session.auth.password_in
}
auth_chap() { # USER SECRET
    iscsid_conf_set node.session.auth.authmethod CHAP
    iscsid_conf_set node.session.auth.username "$1"
    iscsid_conf_set node.session.auth.password "$2"
    iscsid_conf_unset node.session.auth.username_in
    iscsid_conf_unset node.session.auth.password_in
}
auth_mutual() { # USER SECRET TUSER TSECRET
    auth_chap "$1" "$2"
    iscsid_conf_set node.session.auth.username_in "$3"
    iscsid_conf_set node.session.auth.password_in "$4"
}
# login that must be refused; leaves no session behind
login_refused() {
    forget_nodes
    discover "$PORTAL" || return 1   # a refused discovery counts as refused
    if node_login "$PORTAL"; then node_logout "$PORTAL"; return 0; fi
    return 1
}

# Each part runs in a subshell: a failing part (its steps stop at the first
# failure) is cleaned up and the next part still runs, so one run tells about all.
FAILED=
part() {
    ( "$@" )
    if [ $? -ne 0 ]; then
        FAILED="$FAILED $1"
        umount /mnt/gi 2>/dev/null
        iscsiadm -m node -u >/dev/null 2>&1
    fi
    return 0
}

part_noauth() {
    auth_none
    step_expect_fail noauth_refused login_refused
}
part_chap() {   # 1. one-way CHAP, then a wrong secret is refused
    forget_nodes
    auth_chap "$GI_CHAP_USER" "$GI_CHAP_SECRET"
    cookbook "chap." "$PORTAL"
    auth_chap "$GI_CHAP_USER" "wrong-${GI_CHAP_SECRET}"
    step_expect_fail chap.bad_secret_refused login_refused
}
part_mutual() { # 2. mutual CHAP, then a target that cannot prove the mutual secret is rejected
    forget_nodes
    auth_mutual "$GI_CHAP_USER" "$GI_CHAP_SECRET" "$GI_MUTUAL_USER" "$GI_MUTUAL_SECRET"
    cookbook "mutual." "$PORTAL"
    auth_mutual "$GI_CHAP_USER" "$GI_CHAP_SECRET" "$GI_MUTUAL_USER" "wrong-${GI_MUTUAL_SECRET}"
    step_expect_fail mutual.bad_target_secret_refused login_refused
}

part part_noauth
part part_chap
part part_mutual
forget_nodes
auth_none
if [ -n "$FAILED" ]; then
    gi_log "failed parts:$FAILED"
    exit 1
fi
result done PASS 0 "chap + mutual chap complete"
