"""libgfapi's event threads under ``SCHED_BATCH`` (``serve --gfapi-sched-policy``, the default).

A command on a ``gluster://`` LUN is a relay between threads of this process: the event loop
hands the call to libgfapi's io-thread, the bricks' replies (three, on a replica 3 volume)
arrive on gfapi's event threads (``glfs_epoll...``), and the completion wakes the loop again.
Under the default policy (``SCHED_OTHER``) a woken thread may preempt the running one on the
spot: an event thread is run for the first brick's reply while the loop is in the middle of a
command, and again for the second. ``SCHED_BATCH`` is the kernel's policy for threads that
should not do that: a woken batch thread does not preempt, it runs when the running thread
blocks or its time slice ends (sched(7): "without interactivity causing extra preemptions
between the workload's tasks"). So the loop finishes what it started, and an event thread,
when it runs, finds several replies waiting. Nice values and fairness are unchanged, and an
idle CPU still runs a woken thread at once.

Only the event threads. Measured on 2 CPUs, A/B against the same daemon with ``keep``
(issue 19, BENCHMARKS.md "Stop 29"), one CPU for the daemon: cold 4 KiB reads at QD32
1.14-1.38x with 13-28% less CPU a read, 256 KiB reads 1.25x, 4 KiB writes at QD32
1.09-1.15x, QD1 writes and reads 0.96-1.06x; unpinned, 1.02-1.15x for every row but four sessions of 256 KiB sequential
reads (0.93 [0.88..1.05]). Wider scopes were tried: every libgfapi thread made QD1 writes
1.18-1.24x but QD32 writes 0.80-0.87x (an io-thread that does not preempt the loop winds
nothing until the loop sleeps), and the whole daemon made writes to FUSE-file LUNs
0.88-0.91x (with up to 1.6x the CPU a write).

The policy is a property of each thread, and a new thread inherits its creator's. libgfapi
starts its event threads when a client connects, in whichever thread opened the LUN, so
:meth:`GfapiThreads.sweep` runs once the daemon has opened LUNs (``stores_opened``), and on
its trim timer every 5 s for threads started otherwise. A thread an event thread starts (a
synctask processor, an io-thread for a fop wound from a reply: seen in the integration test)
inherits batch, and the sweep puts it back to normal. A daemon started under another policy
(``chrt``) keeps every thread as it is, and so does a thread given idle or a real-time one.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("gluster_iscsi")

#: ``serve --gfapi-sched-policy`` choices.
CHOICES = ["batch", "keep"]

#: The names of libgfapi's event threads (libglusterfs names every thread it starts
#: ``glfs_...``: glfs_epoll000, glfs_iotwr000, glfs_timer ...).
GFAPI_THREAD_PREFIX = "glfs_epoll"
#: libglusterfs's other threads: one an event thread starts (a synctask processor, an
#: io-thread for a fop wound from a reply) inherits its batch policy, and is put back.
LIBGLUSTERFS_PREFIX = "glfs_"

#: The module every Gluster client of this process goes through: until it is imported there
#: are no event threads to look for (a sweep lists every thread: ~6 us each).
GFAPI_BINDING = "gluster_iscsi.backstore.gfapi._binding"

_NAMES = {
    os.SCHED_OTHER: "normal",
    os.SCHED_BATCH: "batch",
    os.SCHED_IDLE: "idle",
    os.SCHED_FIFO: "fifo",
    os.SCHED_RR: "rr",
}


def policy_name(tid: int = 0) -> str:
    """The policy of thread ``tid`` (0: the calling thread), as ``chrt`` names it."""
    try:
        policy = os.sched_getscheduler(tid)
    except OSError:
        return "unknown"
    # SCHED_RESET_ON_FORK may be or-ed in by whoever set it
    return _NAMES.get(policy & ~getattr(os, "SCHED_RESET_ON_FORK", 0), str(policy))


def named_threads(prefix: str) -> list[tuple[int, str]]:
    """This process's threads whose name starts with ``prefix``: (tid, name)."""
    out: list[tuple[int, str]] = []
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/comm", "rb") as f:
                name = f.read().decode(errors="replace").rstrip("\n")
        except OSError:  # ended meanwhile
            continue
        if name.startswith(prefix):
            out.append((int(tid), name))
    return out


def threads(prefix: str = GFAPI_THREAD_PREFIX) -> list[int]:
    """This process's threads whose name starts with ``prefix``."""
    return [tid for tid, _ in named_threads(prefix)]


class GfapiThreads:
    """Keeps libgfapi's event threads under ``SCHED_BATCH`` (``choice`` "batch"), or leaves them
    (``choice`` "keep")."""

    def __init__(self, choice: str = "batch") -> None:
        if choice not in CHOICES:
            raise ValueError(f"scheduling policy {choice!r}: one of {', '.join(CHOICES)}")
        self.choice = choice
        #: The kernel refused once (a seccomp filter, say): no more tries, said once.
        self.refused: str | None = None
        #: Threads moved to batch so far (a thread is counted once).
        self.moved = 0

    def sweep(self) -> int:
        """Move every event thread still under the normal policy to batch; how many moved.
        libglusterfs's other threads that inherited batch from an event thread go back to
        normal (io-threads must not wait for the loop to sleep: see above).

        Only while the daemon itself runs under the normal policy: one started under another
        (``chrt``) keeps every thread as it is. A refusal is logged once and ends the sweeps:
        it is a matter of speed, not of correctness, and the threads keep the normal policy."""
        if self.choice != "batch" or self.refused is not None:
            return 0
        if policy_name(os.getpid()) != "normal":
            return 0  # the daemon was given a policy from outside
        moved = 0
        param = os.sched_param(0)
        for tid, name in named_threads(LIBGLUSTERFS_PREFIX):
            event = name.startswith(GFAPI_THREAD_PREFIX)
            if policy_name(tid) != ("normal" if event else "batch"):
                continue  # as it should be, or a policy given from outside (idle, real-time)
            try:
                if not event:
                    os.sched_setscheduler(tid, os.SCHED_OTHER, param)
                    continue
                os.sched_setscheduler(tid, os.SCHED_BATCH, param)
            except ProcessLookupError:  # ended meanwhile
                continue
            except OSError as exc:
                self.refused = exc.strerror or str(exc)
                log.warning("scheduling: cannot put libgfapi's event threads under the batch "
                            "policy (%s); the rest keep the normal one", self.refused)
                break
            moved += 1
        self.moved += moved
        return moved

    def summary(self) -> dict[str, object]:
        """For ``status``: the choice, and libgfapi's event threads now by policy."""
        by_policy: dict[str, int] = {}
        for tid in threads():
            name = policy_name(tid)
            if name != "unknown":
                by_policy[name] = by_policy.get(name, 0) + 1
        return {"gfapi_event_threads": self.choice, "gfapi_event_threads_by_policy": by_policy,
                "refused": self.refused}
