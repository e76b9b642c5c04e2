"""Command shipping's sender backlog (second safety review, G3 in /work/REVIEW-G.md): commands
waiting behind a full connection are answered when it goes, and move on when the pending
ones expire, never left waiting for ever."""

from __future__ import annotations

import asyncio
from typing import Any

from gluster_iscsi.server import ship

from .test_ship import KEY, Ships, Stuck, arun, write10


def _fill(g: Ships, n: int) -> list[list[Any]]:
    """Ship ``n`` writes from b to a straight through b's client; one answer list each."""
    a, b = g.gw["a"], g.gw["b"]
    client = b.shipper._client(a.server.address)  # type: ignore[arg-type]
    nexus = b.nexus("y")
    answers: list[list[Any]] = []
    for i in range(n):
        got: list[Any] = []
        answers.append(got)
        header = ship._header(KEY, 1, 0, nexus)
        header.update(cdb=write10(i).hex(), attr=1, expected=512, read=False, write=True)
        client.send(header, b"\x04" * 512, lambda h, d, e, got=got: got.append(e),
                    b.shipper.timeout)
    return answers


async def _until(cond: Any, seconds: float) -> bool:
    for _ in range(int(seconds / 0.01)):
        if cond():
            return True
        await asyncio.sleep(0.01)
    return bool(cond())


@arun
async def test_commands_in_the_backlog_are_answered_when_the_connection_is_lost(tmp_path):
    g = Ships(tmp_path, ["a", "b"])
    await g.start()
    a, b = g.gw["a"], g.gw["b"]
    a.server.runner = stuck = Stuck()
    b.member.lease_seconds = 0.3
    try:
        answers = _fill(g, ship.MAX_IN_FLIGHT + 3)
        assert await _until(lambda: len(stuck.started) == ship.MAX_IN_FLIGHT, 10)
        await a.server.stop()  # the owner goes (SIGKILL: its ship port never comes back)
        assert await _until(lambda: all(answers), 10), \
            f"{sum(1 for x in answers if not x)} commands never answered"
        assert all(type(x[0]) is ConnectionError for x in answers)
    finally:
        await g.close()


@arun
async def test_the_backlog_moves_on_when_pending_commands_expire(tmp_path):
    g = Ships(tmp_path, ["a", "b"])
    await g.start()
    a, b = g.gw["a"], g.gw["b"]
    a.server.runner = stuck = Stuck()  # an owner that never answers, connection up
    b.shipper.timeout = 0.05
    b.member.lease_seconds = 0.2
    try:
        answers = _fill(g, ship.MAX_IN_FLIGHT + 3)
        assert await _until(lambda: all(answers), 10), \
            f"{sum(1 for x in answers if not x)} commands never answered"
        # the last ones had expired by the time room was made: ended unsent
        assert len(stuck.started) == ship.MAX_IN_FLIGHT
        assert all(type(x[0]) is TimeoutError for x in answers)
    finally:
        await g.close()


@arun
async def test_a_gateways_new_connection_replaces_its_old_ones_so_leftovers_never_lock_it_out(
        tmp_path):
    # G12: a gateway whose host rebooted (or lost the network) leaves its connection open on
    # the owner, which only answers and never hears of it; after a few, the per-source limit
    # refused that gateway for good
    g = Ships(tmp_path, ["a", "b"])
    await g.start()
    server = g.gw["a"].server
    host, _, port = server.address.rpartition(":")  # type: ignore[union-attr]
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(server.max_conns_per_source + 2):
            reader, writer = await asyncio.open_connection(host, int(port))
            opened.append((reader, writer))
            client = ship._Client(g.gw["b"].shipper, "unused")
            await asyncio.wait_for(client._handshake(reader, writer), 10)  # never idles out
        for reader, _ in opened[:-1]:  # the leftovers were closed by the owner
            assert await asyncio.wait_for(reader.read(), 10) == b""
        assert sum(server._sources.values()) <= 2
    finally:
        for _, w in opened:
            w.close()
        await g.close()


@arun
async def test_a_session_end_is_told_only_to_owners_still_listening(tmp_path):
    # G13: a client per address the sender ever shipped to, kept for ever; every session end
    # tried a connection to each, dead ports of restarted owners included
    g = Ships(tmp_path, ["a", "b"])
    await g.start()
    b = g.gw["b"]
    try:
        old = b.shipper._client("127.0.0.1:1")  # an owner that since restarted elsewhere
        live = b.shipper._client(g.gw["a"].server.address)  # type: ignore[arg-type]
        b.shipper.nexus_gone(b.nexus("y"))
        assert old._connecting is None and "127.0.0.1:1" not in b.shipper.clients
        assert live is b.shipper.clients[g.gw["a"].server.address]  # type: ignore[index]
        before = g.gw["a"].server.served
        assert await _until(lambda: live.writer is not None and not live.pending
                            and not live.backlog, 10)
        assert g.gw["a"].server.served == before  # (a notice, not a command)
    finally:
        await g.close()


@arun
async def test_an_owner_reads_no_more_requests_while_a_peer_leaves_its_answers_unread(tmp_path):
    # G6: answers leave the memory budget when written; a peer that sends and never reads
    # made the owner buffer every answer, without bound
    from .test_ship import TARGET, read10

    g = Ships(tmp_path, ["a", "b"])
    await g.start()
    a = g.gw["a"]
    host, _, port = a.server.address.rpartition(":")  # type: ignore[union-attr]
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        client = ship._Client(g.gw["b"].shipper, "unused")
        await client._handshake(reader, writer)
        epoch = a.member.luns[KEY].lease.epoch
        n = 1000  # 64 KiB answers each: 64 MiB if all were buffered
        for i in range(1, n + 1):
            writer.write(ship.encode({
                "t": "cmd", "id": i, "key": KEY, "epoch": epoch, "target": TARGET, "lun": 0,
                "cdb": read10(0, 128).hex(), "expected": 128 * 512, "read": True,
                "initiator": "iqn.x", "port": "iqn.x,i,0x1",
                "target_port": f"{TARGET},t,0x0002", "relative_port": 2, "tpg": 2}))
        last = -1
        while a.server.served != last:  # until the owner stops reading
            last = a.server.served
            await asyncio.sleep(0.3)
        assert 0 < a.server.served < n
        # reading the answers lets it go on, to the last
        got = 0
        while got < n:
            header, _ = await asyncio.wait_for(ship.read_frame(reader, 1 << 20), 20)
            assert header["t"] == "res" and header["status"] == 0
            got += 1
        assert a.server.served == n
    finally:
        writer.close()
        await g.close()
