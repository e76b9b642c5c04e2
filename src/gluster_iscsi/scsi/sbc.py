"""SBC-3 block commands: READ/WRITE, capacity, cache, verify, provisioning, atomic updates.

Every handler turns LBAs into byte offsets and yields :mod:`.io` requests; the store never sees a
CDB. Range and field checks come before any I/O so a refused command touches nothing.
"""

from __future__ import annotations

import struct
from collections.abc import Generator
from typing import TYPE_CHECKING

from .context import data_in
from .io import (
    CompareAndWrite,
    Extents,
    Flush,
    OrWrite,
    Read,
    Request,
    Size,
    StartJob,
    Unmap,
    WaitJob,
    Write,
    WriteZeroes,
)
from .sense import (
    Asc,
    CheckCondition,
    SenseKey,
    from_store_error,
    invalid_cdb,
    invalid_param,
    lba_out_of_range,
)
from .spc import (
    MAX_COMPARE_AND_WRITE_BLOCKS,
    MAX_LBA_STATUS_BLOCKS,
    MAX_UNMAP_BLOCKS,
    MAX_UNMAP_DESCRIPTORS,
)
from .task import ScsiResult, Status

if TYPE_CHECKING:
    from .context import Ctx
    from .lu import LogicalUnit
    from .task import Execution

#: Largest buffer one op moves when a command spans more (VERIFY, WRITE SAME, SANITIZE).
CHUNK_BYTES = 1 << 20


def lba_and_length(cdb: bytes) -> tuple[int, int, int]:
    """(LBA, transfer length, index of the length field) for the CDB's size class."""
    op = cdb[0]
    if op < 0x20:  # 6-byte
        n = cdb[4]
        return (cdb[1] & 0x1F) << 16 | cdb[2] << 8 | cdb[3], n, 4
    if op < 0x60:  # 10-byte (READ/WRITE(10), the common case: bytes indexed, not sliced)
        return cdb[2] << 24 | cdb[3] << 16 | cdb[4] << 8 | cdb[5], cdb[7] << 8 | cdb[8], 7
    if op == 0x89:  # COMPARE AND WRITE: NUMBER OF LOGICAL BLOCKS in byte 13
        return int.from_bytes(cdb[2:10], "big"), cdb[13], 13
    if op < 0xA0:  # 16-byte
        return int.from_bytes(cdb[2:10], "big"), int.from_bytes(cdb[10:14], "big"), 10
    return int.from_bytes(cdb[2:6], "big"), int.from_bytes(cdb[6:10], "big"), 6  # 12-byte


def check_range(lu: LogicalUnit, lba: int, n: int) -> None:
    count = lu.block_count
    if lba > count or lba + n > count:
        raise lba_out_of_range()


def _no_protection(cdb: bytes) -> None:
    if cdb[0] >= 0x20 and cdb[1] & 0xE0:  # RDPROTECT/WRPROTECT/VRPROTECT: no PI here
        raise invalid_cdb(1, 7)


def _check_transfer(lu: LogicalUnit, n: int, field: int) -> None:
    if n * lu.block_size > lu.max_transfer_bytes:
        raise invalid_cdb(field)


# -- READ / WRITE ----------------------------------------------------------------------------


def read(ctx: Ctx) -> Execution:
    # The hot path: the checks of _no_protection/check_range/_check_transfer, inline.
    cdb, lu = ctx.cdb, ctx.lu
    lba, n, field = lba_and_length(cdb)
    op = cdb[0]
    if op == 0x08:
        if n == 0:
            n = 256  # READ(6): zero means 256 blocks
    elif cdb[1] & 0xE0:  # RDPROTECT: no protection information here
        raise invalid_cdb(1, 7)
    if lba + n > lu.block_count:
        raise lba_out_of_range()
    bs = lu.block_size
    if n * bs > lu.max_transfer_bytes:
        raise invalid_cdb(field)
    if n == 0:
        return ScsiResult(transfer_length=0)
    data = yield Read(lba * bs, n * bs)
    return ScsiResult(data=data)


def _write_data(ctx: Ctx, need: int) -> memoryview:
    """The whole blocks of data-out that arrived, at most ``need`` bytes.

    When the initiator's Expected Data Transfer Length is shorter than the CDB asks for, we
    write what was sent in whole blocks and let the transport report the residual overflow
    (what libiscsi's residual tests and Linux LIO expect); extra data-out is ignored.
    """
    # (ctx.parameter_list(need), inline: Ctx is interpreted, its method a frame per write;
    # and one view made, not four: cast only what is not flat bytes already, one slice)
    out = ctx.task.data_out
    if out is None:
        return memoryview(b"")
    mv = memoryview(out)
    if mv.ndim != 1 or mv.format != "B":
        mv = mv.cast("B")
    n = min(len(mv), need)
    return mv[: n - n % ctx.lu.block_size]


def write(ctx: Ctx) -> Execution:
    cdb, lu = ctx.cdb, ctx.lu
    lba, n, field = lba_and_length(cdb)
    six = cdb[0] == 0x0A
    if six:
        if n == 0:
            n = 256
    elif cdb[1] & 0xE0:  # WRPROTECT: no protection information here
        raise invalid_cdb(1, 7)
    if lba + n > lu.block_count:
        raise lba_out_of_range()
    bs = lu.block_size
    need = n * bs
    if need > lu.max_transfer_bytes:
        raise invalid_cdb(field)
    fua = (not six and bool(cdb[1] & 0x08)) or not lu.write_cache
    data = _write_data(ctx, need)
    if len(data):
        yield Write(lba * bs, data, fua, last=True)
    return ScsiResult(transfer_length=need)


def write_and_verify(ctx: Ctx) -> Execution:
    cdb, lu = ctx.cdb, ctx.lu
    lba, n, field = lba_and_length(cdb)
    _no_protection(cdb)
    check_range(lu, lba, n)
    _check_transfer(lu, n, field)
    bs = lu.block_size
    data = _write_data(ctx, n * bs)
    if len(data):
        yield Write(lba * bs, data, True)
        back = yield Read(lba * bs, len(data))
        _compare(back, data)
    return ScsiResult(transfer_length=n * bs)


def _compare(actual: bytes | bytearray | memoryview, expected: memoryview | bytes, base: int = 0) -> None:
    if actual != expected:
        mv = memoryview(expected)
        for i in range(len(actual)):
            if actual[i] != mv[i]:
                raise CheckCondition(
                    SenseKey.MISCOMPARE, Asc.MISCOMPARE_DURING_VERIFY, information=base + i
                )


# -- VERIFY ----------------------------------------------------------------------------------


def verify(ctx: Ctx) -> Execution:
    cdb, lu = ctx.cdb, ctx.lu
    lba, n, field = lba_and_length(cdb)
    _no_protection(cdb)
    bytchk = (cdb[1] >> 1) & 0x03
    if bytchk == 2:
        raise invalid_cdb(1, 2)
    check_range(lu, lba, n)
    bs = lu.block_size
    if bytchk == 1:
        _check_transfer(lu, n, field)
        expected = _write_data(ctx, n * bs)
        if len(expected):
            current = yield Read(lba * bs, len(expected))
            _compare(current, expected)
        return ScsiResult(transfer_length=n * bs)
    if bytchk == 3:
        block = ctx.parameter_list(bs)
        if len(block) < bs:
            raise CheckCondition(SenseKey.ILLEGAL_REQUEST, Asc.PARAMETER_LIST_LENGTH_ERROR)
        for i in range(n):
            current = yield Read((lba + i) * bs, bs)
            _compare(current, block, i * bs)
        return ScsiResult(transfer_length=bs if n else 0)
    # BYTCHK 0: check the medium can be read.
    offset, end = lba * bs, (lba + n) * bs
    while offset < end:
        size = min(CHUNK_BYTES, end - offset)
        yield Read(offset, size)
        offset += size
    return ScsiResult()


# -- capacity --------------------------------------------------------------------------------


def _measure(ctx: Ctx) -> Execution:
    """Re-measure the medium (a :class:`~.io.Size` request), so an online grow is seen here."""
    size = yield Size()
    ctx.lu.observed_size(size, ctx.nexus.initiator_port)
    return ScsiResult()


def read_capacity_10(ctx: Ctx) -> Execution:
    cdb, lu = ctx.cdb, ctx.lu
    if not cdb[8] & 0x01 and any(cdb[2:6]):
        raise invalid_cdb(2)  # an LBA without PMI
    yield from _measure(ctx)
    last = lu.block_count - 1
    return ScsiResult(data=struct.pack(">II", min(max(last, 0), 0xFFFFFFFF), lu.block_size))


def read_capacity_16(ctx: Ctx) -> Execution:
    cdb, lu = ctx.cdb, ctx.lu
    alloc = int.from_bytes(cdb[10:14], "big")
    yield from _measure(ctx)
    caps = lu.capabilities
    lbp = 0
    if caps.discard:
        lbp = 0x80 | (0x40 if caps.discard_zeroes else 0)  # LBPME, LBPRZ
    out = struct.pack(">QIBBBB", max(lu.block_count - 1, 0), lu.block_size, 0, lu.lbppbe, lbp, 0)
    return data_in(out + bytes(32 - len(out)), alloc)


# -- cache -----------------------------------------------------------------------------------


def synchronize_cache(ctx: Ctx) -> Execution:
    lba, n, _ = lba_and_length(ctx.cdb)
    check_range(ctx.lu, lba, n)
    try:
        yield Flush()
    except OSError as exc:  # a failed flush loses writes: never report GOOD
        raise from_store_error(exc, write=True) from exc
    return ScsiResult()


def pre_fetch(ctx: Ctx) -> ScsiResult:
    lba, n, _ = lba_and_length(ctx.cdb)
    check_range(ctx.lu, lba, n)
    return ScsiResult()  # no cache to fill: GOOD, not CONDITION MET


# -- START STOP UNIT / PREVENT ALLOW MEDIUM REMOVAL -------------------------------------------


def start_stop_unit(ctx: Ctx) -> ScsiResult:
    cdb, lu = ctx.cdb, ctx.lu
    power_condition = cdb[4] >> 4
    if power_condition:
        return ScsiResult()  # power conditions are accepted and have no effect
    start, loej = cdb[4] & 0x01, cdb[4] & 0x02
    if loej:
        raise invalid_cdb(4, 1)  # RMB=0: there is no medium to load or eject
    with lu.state_lock:
        lu.started = bool(start)
    return ScsiResult()


def prevent_allow_medium_removal(ctx: Ctx) -> ScsiResult:
    prevent = ctx.cdb[4] & 0x03
    with ctx.lu.state_lock:
        if prevent:
            ctx.lu.prevent_removal.add(ctx.nexus.initiator_port)
        else:
            ctx.lu.prevent_removal.discard(ctx.nexus.initiator_port)
    return ScsiResult()


# -- COMPARE AND WRITE / ORWRITE --------------------------------------------------------------


def compare_and_write(ctx: Ctx) -> Execution:
    cdb, lu = ctx.cdb, ctx.lu
    lba, n, _ = lba_and_length(cdb)
    _no_protection(cdb)
    if n > MAX_COMPARE_AND_WRITE_BLOCKS:
        raise invalid_cdb(13)
    check_range(lu, lba, n)
    bs = lu.block_size
    need = 2 * n * bs
    data = ctx.parameter_list(need + 1)
    if len(data) != need:
        # Verify and write data must be exactly 2 x NUMBER OF LOGICAL BLOCKS: anything else
        # means the initiator and we disagree about which half is which (libiscsi sends 256
        # blocks' worth with the 8-bit field wrapped to 0 and expects this refusal).
        raise invalid_cdb(13)
    if n == 0:
        return ScsiResult(transfer_length=0)
    fua = bool(cdb[1] & 0x08) or not lu.write_cache
    miscompare = yield CompareAndWrite(lba * bs, data[: n * bs], data[n * bs :], fua)
    if miscompare is not None:
        raise CheckCondition(
            SenseKey.MISCOMPARE, Asc.MISCOMPARE_DURING_VERIFY, information=miscompare
        )
    return ScsiResult(transfer_length=need)


def orwrite(ctx: Ctx) -> Execution:
    cdb, lu = ctx.cdb, ctx.lu
    lba, n, field = lba_and_length(cdb)
    _no_protection(cdb)
    check_range(lu, lba, n)
    _check_transfer(lu, n, field)
    bs = lu.block_size
    data = _write_data(ctx, n * bs)
    if len(data):
        fua = bool(cdb[1] & 0x08) or not lu.write_cache
        yield OrWrite(lba * bs, data, fua)
    return ScsiResult(transfer_length=n * bs)


# -- WRITE SAME / UNMAP / GET LBA STATUS ------------------------------------------------------


def _fill(lu: LogicalUnit, offset: int, length: int, block: bytes) -> Execution:
    """Write ``block`` repeatedly over [offset, offset+length), a chunk at a time."""
    bs = lu.block_size
    chunk = block * max(1, CHUNK_BYTES // bs)
    end = offset + length
    while offset < end:
        size = min(len(chunk), end - offset)
        yield Write(offset, memoryview(chunk)[:size], False)
        offset += size
    return ScsiResult()


def write_same(ctx: Ctx) -> Execution:
    cdb, lu = ctx.cdb, ctx.lu
    lba, n, field = lba_and_length(cdb)
    sixteen = cdb[0] == 0x93
    _no_protection(cdb)
    if cdb[1] & 0x10:  # ANCHOR: we never anchor
        raise invalid_cdb(1, 4)
    if cdb[1] & 0x06:  # PBDATA / LBDATA (obsolete)
        raise invalid_cdb(1, 2)
    unmap = bool(cdb[1] & 0x08)
    ndob = sixteen and bool(cdb[1] & 0x01)
    bs = lu.block_size
    check_range(lu, lba, n)
    if n == 0:
        n = lu.block_count - lba  # WSNZ=0: zero blocks means up to the end of the medium
    if ndob:
        block = bytes(bs)
    else:
        mv = ctx.parameter_list(bs + 1)
        if len(mv) != bs:  # exactly one block, or we would guess which bytes to repeat
            raise invalid_cdb(field)
        block = bytes(mv)
    offset, length = lba * bs, n * bs
    zero = not any(block)
    caps = lu.capabilities
    if unmap and caps.discard:
        # UNMAP=1 deallocates whatever the pattern (SBC-3 5.42; libiscsi's unmap_until_end
        # and Linux LIO agree); without LBPRZ the blocks then read back indeterminate,
        # which LBPRZ=0 in VPD B2h/READ CAPACITY(16) told the initiator.
        yield Unmap(offset, length)
    elif zero and caps.write_zeroes:
        yield WriteZeroes(offset, length)
    else:
        yield from _fill(lu, offset, length, block)
    if not lu.write_cache:
        yield Flush()
    return ScsiResult(transfer_length=0 if ndob else bs)


def unmap(ctx: Ctx) -> Execution:
    cdb, lu = ctx.cdb, ctx.lu
    if cdb[1] & 0x01:  # ANCHOR
        raise invalid_cdb(1, 0)
    length = int.from_bytes(cdb[7:9], "big")
    if length == 0:
        return ScsiResult()
    if length < 8:
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, Asc.PARAMETER_LIST_LENGTH_ERROR)
    params = ctx.require_parameter_list(length)
    data_len = int.from_bytes(params[0:2], "big")
    bd_len = int.from_bytes(params[2:4], "big")
    if data_len + 2 > length or bd_len + 8 > length:
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, Asc.PARAMETER_LIST_LENGTH_ERROR)
    count = bd_len // 16  # a trailing partial descriptor is ignored (SBC-3 5.28.2)
    if count > MAX_UNMAP_DESCRIPTORS:
        raise invalid_param(2)
    bs = lu.block_size
    ranges: list[tuple[int, int]] = []
    for i in range(count):
        pos = 8 + 16 * i
        lba = int.from_bytes(params[pos : pos + 8], "big")
        n = int.from_bytes(params[pos + 8 : pos + 12], "big")
        if n > MAX_UNMAP_BLOCKS:
            raise invalid_param(pos + 8)
        check_range(lu, lba, n)
        if n:
            ranges.append((lba * bs, n * bs))
    for offset, size in ranges:
        yield Unmap(offset, size)
    return ScsiResult()


def get_lba_status(ctx: Ctx) -> Execution:
    cdb, lu = ctx.cdb, ctx.lu
    lba = int.from_bytes(cdb[2:10], "big")
    alloc = int.from_bytes(cdb[10:14], "big")
    count = lu.block_count
    if lba >= count:
        raise lba_out_of_range()
    bs = lu.block_size
    span = min(count - lba, MAX_LBA_STATUS_BLOCKS)
    # A block is deallocated only if every byte of its physical block is: ask about whole
    # physical blocks, merge holes, round them inward (the store allocates no finer).
    pbs = lu.physical_block_size
    first = lba * bs // pbs * pbs
    last = min(-(-(lba + span) * bs // pbs) * pbs, count * bs)
    extents = yield Extents(first, last - first)
    holes: list[list[int]] = []
    for ext in sorted(extents, key=lambda e: e.offset):
        if ext.mapped or ext.length <= 0:
            continue
        if holes and holes[-1][1] >= ext.offset:
            holes[-1][1] = max(holes[-1][1], ext.offset + ext.length)
        else:
            holes.append([ext.offset, ext.offset + ext.length])
    runs: list[tuple[int, int, int]] = []
    pos, end = lba, lba + span
    for start_b, end_b in holes:
        start_b, end_b = -(-start_b // pbs) * pbs, end_b // pbs * pbs
        start, stop = max(start_b // bs, pos), min(end_b // bs, end)
        if stop <= start:
            continue
        if start > pos:
            runs.append((pos, start, 0))
        runs.append((start, stop, 1))
        pos = stop
    if pos < end:
        runs.append((pos, end, 0))
    room = max(1, (alloc - 8) // 16) if alloc >= 24 else 1
    body = b"".join(
        struct.pack(">QIB3x", s, min(e - s, 0xFFFFFFFF), st) for s, e, st in runs[:room]
    )
    out = struct.pack(">I4x", len(body) + 4) + body
    return data_in(out, alloc)


# -- READ DEFECT DATA ------------------------------------------------------------------------


def read_defect_data(ctx: Ctx) -> ScsiResult:
    cdb = ctx.cdb
    if cdb[0] == 0x37:
        flags = cdb[2] & 0x1F
        alloc = int.from_bytes(cdb[7:9], "big")
        out = bytes([0, flags, 0, 0])
    else:
        flags = cdb[1] & 0x1F
        alloc = int.from_bytes(cdb[6:10], "big")
        out = bytes([0, flags, 0, 0, 0, 0, 0, 0])
    return data_in(out, alloc)  # an empty list: this medium has no defects to report


# -- SANITIZE --------------------------------------------------------------------------------


def sanitize(ctx: Ctx) -> Execution:
    """SANITIZE (SBC-3 5.30): OVERWRITE really writes the pattern over every block; BLOCK
    ERASE (offered only when deallocated blocks read back zero) deallocates them all.

    Every malformed CDB or parameter list is INVALID FIELD IN CDB, as libiscsi's sanitize
    tests expect. Once accepted, the work is a background job of the LU (:mod:`.background`):
    IMMED=1 returns GOOD at once; IMMED=0 waits for the end. Either way resets, aborts and
    nexus loss end the command but not the sanitize, and until it is done other commands
    get NOT READY / SANITIZE IN PROGRESS with its progress.
    """
    cdb, lu = ctx.cdb, ctx.lu
    action = cdb[1] & 0x1F
    immed = bool(cdb[1] & 0x80)
    if cdb[1] & 0x40:
        raise invalid_cdb(1, 6)  # reserved
    if cdb[1] & 0x20:  # AUSE: no failure mode to exit
        raise invalid_cdb(1, 5)
    if any(cdb[2:7]):
        raise invalid_cdb(next(i for i in range(2, 7) if cdb[i]))
    length = int.from_bytes(cdb[7:9], "big")
    bs = lu.block_size
    total = lu.block_count * bs
    if action == 0x02:  # BLOCK ERASE takes no parameter list
        if length:
            raise invalid_cdb(7)
        job = lu.start_background(
            "SANITIZE BLOCK ERASE", _block_erase(lu, total), total=1, rate=None
        )
    else:
        if length < 5 or length > bs + 4:
            raise invalid_cdb(7)
        params = ctx.parameter_list(length)
        if len(params) < length:
            raise invalid_cdb(7)
        invert = bool(params[0] & 0x80)
        owcount = params[0] & 0x1F
        plen = int.from_bytes(params[2:4], "big")
        if params[0] & 0x60 or owcount == 0 or plen == 0 or plen > bs or plen + 4 > length:
            raise invalid_cdb(7)
        pattern = bytes(params[4 : 4 + plen])  # a copy: the data-out buffer goes back now
        block = (pattern * (bs // plen + 1))[:bs]
        passes = [
            bytes(b ^ 0xFF for b in block) if invert and i % 2 else block for i in range(owcount)
        ]
        job = lu.start_background(
            "SANITIZE OVERWRITE",
            _overwrite(lu, total, passes),
            total=total * owcount,
            rate=lu.sanitize_rate,
        )
    yield StartJob(job, lu)  # the job's requests address this LU
    if immed:
        return ScsiResult()
    task = ctx.task
    lu.job_waiters.add(task)
    try:
        while not (yield WaitJob(job)):
            if task.aborted:
                return ScsiResult(status=Status.TASK_ABORTED)  # the transport drops it
    finally:
        lu.job_waiters.discard(task)
    if job.error is not None:
        if isinstance(job.error, OSError):
            raise from_store_error(job.error, write=True)
        raise CheckCondition(SenseKey.MEDIUM_ERROR, Asc.WRITE_ERROR)
    return ScsiResult()


def _block_erase(lu: LogicalUnit, total: int) -> Generator[Request, object, None]:
    yield Unmap(0, total)
    yield Flush()


def _overwrite(lu: LogicalUnit, total: int, passes: list[bytes]) -> Generator[Request, object, None]:
    """Each pass writes its block pattern over the whole LU, a chunk per op."""
    job = lu.background
    assert job is not None
    bs = lu.block_size
    for block in passes:
        chunk = memoryview(block * max(1, CHUNK_BYTES // bs))
        offset = 0
        while offset < total:
            size = min(len(chunk), total - offset)
            yield Write(offset, chunk[:size], False)
            offset += size
            job.advance(size)
    yield Flush()
