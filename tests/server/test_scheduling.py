"""``server/scheduling.py``: libgfapi's event threads under SCHED_BATCH (serve
--gfapi-sched-policy).

Policies are changed in a child process, so this test process keeps its own; the threads there
take the names libglusterfs gives its own (``glfs_...``). Against a real libgfapi client:
tests/integration/test_gluster.py (the status of a daemon serving a gluster:// LUN)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from gluster_iscsi.server import scheduling

CHILD = r"""
import ctypes, json, os, sys, threading
from gluster_iscsi.server import scheduling
libc = ctypes.CDLL(None, use_errno=True)
names = [("glfs_epoll000",), ("glfs_epoll001",), ("glfs_iotwr000",), ("glfs_timer",),
         ("store-ctl_0",), ("glfs_epoll002", os.SCHED_IDLE),
         ("glfs_sproc0", os.SCHED_BATCH),  # started by an event thread: inherited batch
         ("glfs_iotwr001", os.SCHED_IDLE)]
ready, stop = threading.Barrier(len(names) + 1), threading.Event()
tids = {}
def named(name, policy=None):
    libc.prctl(15, name.encode(), 0, 0, 0)  # PR_SET_NAME: what gf_thread_create does
    if policy is not None:
        os.sched_setscheduler(0, policy, os.sched_param(0))
    tids[name] = threading.get_native_id()
    ready.wait()
    stop.wait()
threads = [threading.Thread(target=named, args=a) for a in names]
for t in threads:
    t.start()
ready.wait()
if sys.argv[2] == "daemon-batch":  # chrt -b on the daemon: its own threads are batch
    os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
gt = scheduling.GfapiThreads(sys.argv[1])
first = gt.sweep()
second = gt.sweep()
out = {"moved": [first, second], "total": gt.moved, "summary": gt.summary(),
       "main": scheduling.policy_name(),
       **{name: scheduling.policy_name(tid) for name, tid in tids.items()}}
stop.set()
for t in threads:
    t.join()
print(json.dumps(out))
"""


def run_child(choice: str, start: str = "normal") -> dict[str, object]:
    r = subprocess.run([sys.executable, "-c", CHILD, choice, start], capture_output=True,
                       text=True, timeout=60, check=True)
    return json.loads(r.stdout)


def test_batch_moves_the_event_threads_and_nothing_else():
    assert scheduling.policy_name() == "normal"  # the premise: tests run under the default
    out = run_child("batch")
    assert out["glfs_epoll000"] == out["glfs_epoll001"] == "batch"
    # the loop, our own threads and libgfapi's others (io-threads: see scheduling.py)
    assert out["main"] == out["store-ctl_0"] == out["glfs_iotwr000"] == out["glfs_timer"] \
        == "normal"
    assert out["glfs_epoll002"] == out["glfs_iotwr001"] == "idle"  # given from outside: kept
    assert out["glfs_sproc0"] == "normal"  # what it inherited from an event thread: undone
    assert out["moved"] == [2, 0] and out["total"] == 2  # a thread is moved once
    assert out["summary"] == {"gfapi_event_threads": "batch", "refused": None,
                              "gfapi_event_threads_by_policy": {"batch": 2, "idle": 1}}


def test_keep_moves_nothing():
    out = run_child("keep")
    assert out["glfs_epoll000"] == out["glfs_epoll001"] == out["main"] == "normal"
    assert out["glfs_sproc0"] == "batch"
    assert out["moved"] == [0, 0]
    assert out["summary"] == {"gfapi_event_threads": "keep", "refused": None,
                              "gfapi_event_threads_by_policy": {"normal": 2, "idle": 1}}


def test_a_daemon_started_under_another_policy_keeps_every_thread_as_it_is():
    out = run_child("batch", "daemon-batch")
    assert out["main"] == out["glfs_sproc0"] == "batch"
    assert out["glfs_epoll000"] == out["glfs_iotwr000"] == "normal"  # started before the chrt
    assert out["moved"] == [0, 0]


def test_an_unknown_choice_is_refused():
    with pytest.raises(ValueError, match="batch, keep"):
        scheduling.GfapiThreads("fifo")


def test_a_refusal_is_said_once_and_ends_the_sweeps(monkeypatch, caplog):
    calls: list[int] = []

    def refuse_the_second(tid: int, policy: int, param: object) -> None:
        calls.append(tid)
        if tid == 12:
            raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(scheduling, "named_threads",
                        lambda prefix: [(t, f"glfs_epoll00{t}") for t in (11, 12, 13)])
    monkeypatch.setattr(scheduling, "policy_name", lambda tid=0: "normal")
    monkeypatch.setattr(scheduling.os, "sched_setscheduler", refuse_the_second)
    gt = scheduling.GfapiThreads()
    with caplog.at_level(logging.WARNING, logger="gluster_iscsi"):
        assert gt.sweep() == 1  # the first one moved before the refusal
        assert gt.sweep() == 0
    assert calls == [11, 12]  # none after the refusal, in this sweep or the next
    assert gt.refused == "Operation not permitted" and gt.moved == 1
    assert caplog.text.count("cannot put libgfapi's event threads under the batch") == 1


def test_a_thread_that_ended_meanwhile_is_skipped(monkeypatch):
    done: list[int] = []

    def setscheduler(tid: int, policy: int, param: object) -> None:
        if tid == 12:
            raise ProcessLookupError(3, "No such process")
        done.append(tid)

    monkeypatch.setattr(scheduling, "named_threads",
                        lambda prefix: [(t, f"glfs_epoll00{t}") for t in (11, 12, 13)])
    monkeypatch.setattr(scheduling, "policy_name", lambda tid=0: "normal")
    monkeypatch.setattr(scheduling.os, "sched_setscheduler", setscheduler)
    assert scheduling.GfapiThreads().sweep() == 2
    assert done == [11, 13]


def test_threads_are_found_by_name():
    assert os.getpid() in scheduling.threads("")  # the main thread's tid is the pid
    assert scheduling.threads("no-such-thread-name") == []


@pytest.mark.parametrize("loaded", [True, False])
def test_the_daemon_sweeps_on_its_timer_and_after_opens_once_libgfapi_is_loaded(
        tmp_path, monkeypatch, loaded):
    import asyncio

    from gluster_iscsi.server.daemon import Daemon

    if loaded:
        monkeypatch.setitem(sys.modules, scheduling.GFAPI_BINDING, sys.modules[__name__])
    else:
        monkeypatch.delitem(sys.modules, scheduling.GFAPI_BINDING, raising=False)
    sweeps: list[int] = []

    async def main() -> None:
        d = Daemon(tmp_path)
        assert d.gfapi_threads.choice == "batch"  # what serve gives it by default
        monkeypatch.setattr(d.gfapi_threads, "sweep", lambda: sweeps.append(1) or 0)
        try:
            d._trim_pool()
            d._trim_pool()
            d.stores_opened()  # what reconcile says after opening LUNs
        finally:
            await d.stop()

    asyncio.run(main())
    assert len(sweeps) == (3 if loaded else 0)


def test_a_failed_sweep_is_logged_and_fails_neither_the_open_nor_the_timer(tmp_path, monkeypatch,
                                                                          caplog):
    import asyncio

    from gluster_iscsi.server.daemon import Daemon

    monkeypatch.setitem(sys.modules, scheduling.GFAPI_BINDING, sys.modules[__name__])

    def broken() -> int:
        raise RuntimeError("a bug")

    async def main() -> None:
        d = Daemon(tmp_path)
        monkeypatch.setattr(d.gfapi_threads, "sweep", broken)
        try:
            d.stores_opened()
            d._trim_pool()
            assert d._trim_timer is not None  # rearmed
        finally:
            await d.stop()

    with caplog.at_level(logging.ERROR):
        asyncio.run(main())
    assert caplog.text.count("the sweep of libgfapi's threads failed") == 2
