"""The benchmark report's read-cache and fio lines (bench/harness.py), from saved results:
they say what a run measured, so they are checked like code (no daemon, no Gluster)."""

from __future__ import annotations

import functools
import importlib.util
import os
import sys

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


@functools.cache
def harness():
    """bench/harness.py under a name of its own. It imports its sibling ``targets`` by that
    plain name, which another module of the suite (scripts/guest/targets.py) also has: the
    import runs with bench/ first on the path and no ``targets`` loaded, and leaves both
    ``sys.path`` and ``sys.modules`` as it found them."""
    saved_path, saved = list(sys.path), sys.modules.pop("targets", None)
    sys.path.insert(0, BENCH)
    try:
        spec = importlib.util.spec_from_file_location("bench_harness",
                                                      os.path.join(BENCH, "harness.py"))
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules["bench_harness"] = mod  # (its dataclasses look their module up there)
        spec.loader.exec_module(mod)
    finally:
        sys.path[:] = saved_path
        sys.modules.pop("targets", None)
        if saved is not None:
            sys.modules["targets"] = saved
    return mod


def test_hit_ratio_counts_only_what_was_read_between_the_two_snapshots():
    h = harness()
    assert h.hit_ratio((10, 90), (40, 150)) == {"hits": 30, "misses": 60, "hit_ratio": 30 / 90}
    assert h.hit_ratio(None, (1, 1)) is None
    assert h.hit_ratio((5, 5), (5, 5)) is None  # nothing read through the cache
    assert h.hit_ratio((50, 50), (1, 2)) is None  # the cache was reset meanwhile


def workload(name, ops_b, cache_b=None):
    return {"name": name, "A": {"ops_s": 1.0}, "B": {"ops_s": ops_b},
            "cache": {"B": cache_b} if cache_b else None}


def test_ours_on_gfapi_is_set_against_fio_gfapi_engine_of_the_same_run():
    h = harness()
    sec = {"backing_b": "gfapi 127.0.0.1:vol/lun.img",
           "workloads": [workload("coldset-randread-4k-qd1", 3000.0,
                                  {"hits": 2, "misses": 98, "hit_ratio": 0.02}),
                         workload("randread-4k-qd32", 9000.0),
                         workload("seqread-256k-qd16", 500.0)]}
    report = {"ceilings": {"fio": {"gluster-gfapi": {
        "randread-4k-qd1": {"ops_s": 6000.0}, "randread-4k-qd32": {"ops_s": 12000.0}}}}}
    lines = h.cache_lines(sec, report)
    assert lines[0] == "- Read cache hit ratio of ours over the measured rounds: " \
                       "coldset-randread-4k-qd1 B 0.02"
    assert "coldset-randread-4k-qd1 0.50 (3,000 against fio randread-4k-qd1 6,000 IOPS; " \
           "hit ratio 0.02)" in lines[1]
    assert "randread-4k-qd32 0.75 (9,000 against fio randread-4k-qd32 12,000 IOPS)" in lines[1]
    assert "seqread" not in lines[1]


def test_no_fio_line_without_gfapi_or_without_fio():
    h = harness()
    wl = [workload("randread-4k-qd32", 9000.0)]
    fio = {"ceilings": {"fio": {"gluster-gfapi": {"randread-4k-qd32": {"ops_s": 12000.0}}}}}
    assert h.cache_lines({"backing_b": "file in /dev/shm/x", "workloads": wl}, fio) == []
    assert h.cache_lines({"backing_b": "gfapi h:v/x", "workloads": wl}, {}) == []
    assert h.cache_lines({"backing_b": "gfapi h:v/x", "workloads": wl},
                         {"ceilings": {"fio": {"gluster-gfapi": {"error": "fio not installed"}}}}) == []


def test_a_pinned_run_sets_ours_against_fio_on_the_daemons_cpus_and_says_the_unpinned_too():
    h = harness()
    sec = {"backing_b": "gfapi 127.0.0.1:vol/lun.img",
           "workloads": [workload("randread-4k-qd32", 9000.0)]}
    report = {"ceilings": {"fio": {
        "gluster-gfapi": {"cpus": [0], "randread-4k-qd32": {"ops_s": 10000.0}},
        "gluster-gfapi-unpinned": {"randread-4k-qd32": {"ops_s": 12000.0}}}}}
    lines = h.cache_lines(sec, report)
    assert len(lines) == 2
    assert "gfapi_async, fio on CPUs 0 as the daemons): randread-4k-qd32 0.90 (9,000" in lines[0]
    assert "gfapi_async, fio unpinned): randread-4k-qd32 0.75 (9,000" in lines[1]


def test_fio_on_the_luns_own_file_gets_lines_of_its_own_pinned_and_unpinned():
    """Only under the section whose B is that file: another gfapi section (ours against ours,
    a gateway group) reads files of its own."""
    h = harness()
    sec = {"backing_b": "gfapi 127.0.0.1:vol/bench-1/ours-lun1.img",
           "workloads": [workload("randread-4k-qd32", 9000.0)]}
    report = {"ceilings": {"fio": {
        "gluster-gfapi": {"cpus": [0], "randread-4k-qd32": {"ops_s": 10000.0}},
        "gluster-gfapi-lunfile": {"cpus": [0], "file": "bench-1/ours-lun1.img",
                                  "randread-4k-qd32": {"ops_s": 15000.0}},
        "gluster-gfapi-lunfile-unpinned": {"file": "bench-1/ours-lun1.img",
                                           "randread-4k-qd32": {"ops_s": 18000.0}}}}}
    lines = h.cache_lines(sec, report)
    assert len(lines) == 3
    assert "gfapi_async, fio on CPUs 0 as the daemons): randread-4k-qd32 0.90 (9,000" in lines[0]
    assert ("gfapi_async, fio on the LUN's own file after our rounds, fio on CPUs 0 as the "
            "daemons): randread-4k-qd32 0.60 (9,000 against fio randread-4k-qd32 15,000 IOPS)") \
        in lines[1]
    assert ("fio on the LUN's own file after our rounds, fio unpinned): randread-4k-qd32 0.50 "
            "(9,000 against fio randread-4k-qd32 18,000 IOPS)") in lines[2]
    other = dict(sec, backing_b="gfapi 127.0.0.1:vol/bench-1/group-a-lun.img")
    lines = h.cache_lines(other, report)
    assert len(lines) == 1 and "own file" not in lines[0]


def test_our_gfapi_path_alone_is_set_against_fio_on_the_luns_own_file():
    """bench/gfapi_calls.py's rows (no iSCSI) against fio on the same file: where the
    distance to fio is. Only under the section on that file, against the LUN-file fio, and
    never from a run that failed (its rows, if any, are not a measurement)."""
    h = harness()
    sec = {"backing_b": "gfapi 127.0.0.1:vol/bench-1/ours-lun1.img",
           "workloads": [workload("randread-4k-qd32", 9000.0)]}
    path = {"cpus": [0], "file": "bench-1/ours-lun1.img",
            "read.raw-qd1": {"ops_s": 6000.0, "p50_us": 150.0, "cpu_us": 50.0},
            "read.engine-qd1": {"ops_s": 5000.0, "p50_us": 170.0, "cpu_us": 60.0},
            "read.engine-qd32": {"ops_s": 13500.0, "p50_us": 2000.0, "cpu_us": 45.0}}
    fio_lun = {"cpus": [0], "file": "bench-1/ours-lun1.img", "randread-4k-qd1": {"ops_s": 6000.0},
               "randread-4k-qd32": {"ops_s": 15000.0}}
    report = {"ceilings": {"fio": {"gluster-gfapi-lunfile": fio_lun}, "gfapi-path": path}}
    lines = h.cache_lines(sec, report)
    assert lines[-1] == (
        "- Our gfapi path without the iSCSI hop (bench/gfapi_calls.py, in-process) against fio, "
        "both on the LUN's own file: read.raw-qd1 1.00 (6,000 against fio randread-4k-qd1 6,000 "
        "IOPS); read.engine-qd1 0.83 (5,000 against fio randread-4k-qd1 6,000 IOPS); "
        "read.engine-qd32 0.90 (13,500 against fio randread-4k-qd32 15,000 IOPS)")
    # the ceilings section lists the rows themselves
    assert h.gfapi_path_line(path) == (
        "- our gfapi path in-process on the LUN's own file, no iSCSI (bench/gfapi_calls.py, "
        "on CPUs 0): read.raw-qd1 6,000 IOPS (p50 150 us); read.engine-qd1 5,000 IOPS "
        "(p50 170 us); read.engine-qd32 13,500 IOPS (p50 2000 us)")

    def path_line(rep, s=sec):
        return [x for x in h.cache_lines(s, rep) if "Our gfapi path" in x]
    # without fio on the LUN's file, with a failed path run or a failed fio (rows or not),
    # or under another section: no comparison line
    assert not path_line({"ceilings": {"gfapi-path": path}})
    failed = dict(path, error="no asynchronous gfapi engine here")
    assert not path_line({"ceilings": {"fio": {"gluster-gfapi-lunfile": fio_lun}, "gfapi-path": failed}})
    fio_failed = dict(fio_lun, error="fio: gfapi engine crashed")
    assert not path_line({"ceilings": {"fio": {"gluster-gfapi-lunfile": fio_failed}, "gfapi-path": path}})
    assert not path_line(report, dict(sec, backing_b="gfapi 127.0.0.1:vol/bench-1/a-lun1.img"))
    assert h.gfapi_path_line({"error": "no asynchronous gfapi engine here", "file": "x"}) == \
        "- our gfapi path in-process: no asynchronous gfapi engine here"


def test_cold_qd1_is_set_against_fio_plus_the_round_trip_of_a_hit_of_the_same_run():
    """The cold QD1 row's p50 against fio's QD1 p50 plus ours on a hit (the hot-set latclient
    row): fio on the LUN's own file when it is this section's, else fio on its own file; no
    line when the hot row was not all hits, the cold row mostly hits, or a latency or fio is
    missing."""
    h = harness()

    def lat(name, p50, hit):
        w = workload(name, 1000.0, {"hits": 0, "misses": 0, "hit_ratio": hit})
        w["B"]["p50_us"] = p50
        return w
    sec = {"backing_b": "gfapi 127.0.0.1:vol/bench-1/ours-lun1.img",
           "workloads": [lat("coldset-randread-4k-qd1", 400.0, 0.14),
                         lat("hotset-randread-4k-qd1", 60.0, 1.0)]}
    fio_own = {"cpus": [0], "randread-4k-qd1": {"ops_s": 5000.0, "p50_us": 180.0}}
    fio_lun = {"cpus": [0], "file": "bench-1/ours-lun1.img",
               "randread-4k-qd1": {"ops_s": 4800.0, "p50_us": 200.0}}

    def hop(rep, s=sec):
        return [x for x in h.cache_lines(s, {"ceilings": {"fio": rep}}) if "iSCSI hop" in x]
    assert hop({"gluster-gfapi": fio_own, "gluster-gfapi-lunfile": fio_lun}) == [
        "- Cold QD1 reads against fio plus the iSCSI hop, p50 latencies of this run: ours 400 us "
        "(coldset-randread-4k-qd1, hit ratio 0.14) against fio 200 us (gluster-gfapi-lunfile "
        "randread-4k-qd1) + ours from the cache 60 us (hotset-randread-4k-qd1) = 260 us: 0.65 "
        "(1.00: a cold read costs ours nothing beyond a hit's round trip and fio's gfapi read)"]
    # fio on its own file when the LUN-file fio is another section's, failed, or absent
    other = dict(fio_lun, file="bench-1/group-a-lun.img")
    for rep in ({"gluster-gfapi": fio_own, "gluster-gfapi-lunfile": other},
                {"gluster-gfapi": fio_own, "gluster-gfapi-lunfile": dict(fio_lun, error="x")},
                {"gluster-gfapi": fio_own}):
        (line,) = hop(rep)
        assert "against fio 180 us (gluster-gfapi randread-4k-qd1)" in line and ": 0.60 (" in line
    # no line: a hot row with misses (not the round trip of a hit), no latency, no fio
    missed = dict(sec, workloads=[sec["workloads"][0], lat("hotset-randread-4k-qd1", 60.0, 0.9)])
    assert not hop({"gluster-gfapi": fio_own}, missed)
    cached = dict(sec, workloads=[lat("coldset-randread-4k-qd1", 60.0, 1.0), sec["workloads"][1]])
    assert not hop({"gluster-gfapi": fio_own}, cached)  # the whole LUN in the cache: not cold
    no_p50 = dict(sec, workloads=[sec["workloads"][0], workload("hotset-randread-4k-qd1", 1.0)])
    assert not hop({"gluster-gfapi": fio_own}, no_p50)
    assert not hop({"gluster-gfapi": {"randread-4k-qd1": {"ops_s": 5000.0}}})
    assert not hop({})


def test_fio_alternated_with_the_rounds_gives_a_ratio_per_round():
    """fio's job right after each round of ours on the LUN's file (``fio_rounds``): the ratio
    of each round, median [min..max], rounds where either side failed left out; and the cold
    QD1 round trip round by round, under hop_line's conditions."""
    h = harness()

    def rounds(name, ours, fio, hit, p50s=None, fio_p50s=None):
        w = workload(name, 1.0, {"hits": 0, "misses": 0, "hit_ratio": hit})
        w["samples"] = {"B": [{"ops_s": o, "p50_us": (p50s or [None] * len(ours))[i]}
                              for i, o in enumerate(ours)]}
        w["fio_rounds"] = [{"ops_s": f, "p50_us": (fio_p50s or [None] * len(fio))[i]}
                           for i, f in enumerate(fio)]
        return w
    cold = rounds("coldset-randread-4k-qd1", [3000.0, 2000.0, 3300.0], [4000.0, 4000.0, 3000.0],
                  0.12, p50s=[300.0, 400.0, 280.0], fio_p50s=[200.0, 250.0, 160.0])
    qd32 = rounds("randread-4k-qd32", [9000.0, 8000.0, 7000.0], [10000.0, 8000.0, 0.0], 0.05)
    qd32["fio_rounds"][2] = {"error": "fio: no gfapi"}
    hot = workload("hotset-randread-4k-qd1", 1.0, {"hits": 9, "misses": 0, "hit_ratio": 1.0})
    hot["B"]["p50_us"] = 60.0
    sec = {"backing_b": "gfapi 127.0.0.1:vol/lun.img", "fio_paired": {"cpus": [0], "args": []},
           "workloads": [cold, qd32, hot]}
    lines = h.paired_lines({w["name"]: w for w in sec["workloads"]}, sec)
    assert lines[0] == (
        "- B against fio's gfapi engine alternated with the rounds (fio on the LUN's own file right "
        "after each round of ours, on CPUs 0 as the daemons; ratio per round, median [min..max]): "
        "coldset-randread-4k-qd1 0.75 [0.50..1.10] against fio randread-4k-qd1 over 3 rounds; "
        "randread-4k-qd32 0.95 [0.90..1.00] against fio randread-4k-qd32 over 2 rounds")
    # (200+60)/300, (250+60)/400, (160+60)/280
    assert lines[1] == (
        "- Cold QD1 reads against fio plus the iSCSI hop, round by round (ours' p50 against fio's "
        "p50 right after it + ours from the cache 60 us): 0.79 [0.78..0.87] over 3 rounds")
    assert lines == [x for x in h.cache_lines(sec, {}) if "alternated" in x or "round by round" in x]
    # an errored round of ours is left out too
    cold["samples"]["B"][1]["error"] = "client died"
    (first, _) = h.paired_lines({w["name"]: w for w in sec["workloads"]}, sec)
    assert "coldset-randread-4k-qd1 0.93 [0.75..1.10] against fio randread-4k-qd1 over 2 rounds" in first
    # no round-by-round trip when the hot row was not all hits, or the cold row mostly hits
    hot["cache"]["B"]["hit_ratio"] = 0.9
    assert len(h.paired_lines({w["name"]: w for w in sec["workloads"]}, sec)) == 1
    hot["cache"]["B"]["hit_ratio"] = 1.0
    cold["cache"]["B"]["hit_ratio"] = 1.0
    assert len(h.paired_lines({w["name"]: w for w in sec["workloads"]}, sec)) == 1
    # nothing without fio after the rounds
    assert h.paired_lines({w["name"]: w for w in sec["workloads"]}, dict(sec, fio_paired=None)) == []


def test_the_bricks_cpu_a_read_is_set_beside_fios_round_by_round():
    """The bricks' CPU a read in each round of ours (over the client's whole run, at its
    window's rate) and in fio's job after it: medians per workload; rounds without the
    figures (results saved before they were taken) are left out, and no line without any."""
    h = harness()
    w = workload("randread-4k-qd32", 1.0, {"hits": 0, "misses": 9, "hit_ratio": 0.05})
    # 9,000 reads/s over 4 s of client run: 36,000 reads; 3.6 s of bricks = 100 us a read
    w["samples"] = {"B": [{"ops_s": 9000.0, "wall_s": 4.0, "brick_cpu_s": b}
                          for b in (3.6, 2.88, 4.32)]}
    w["fio_rounds"] = [{"ops_s": 10000.0, "brick_cpu_us": u} for u in (95.0, 70.0, 110.0)]
    sec = {"backing_b": "gfapi 127.0.0.1:vol/lun.img", "fio_paired": {"cpus": [], "args": []},
           "workloads": [w]}
    lines = h.paired_lines({"randread-4k-qd32": w}, sec)
    assert lines[1] == (
        "- The bricks' CPU a read in those rounds, median (a daemon that costs them more a read "
        "than fio does would show here): randread-4k-qd32 100 us under ours, 95 under fio")
    for f in w["fio_rounds"]:
        del f["brick_cpu_us"]
    assert len(h.paired_lines({"randread-4k-qd32": w}, sec)) == 1
