"""A tiny in-test memory store and helpers to drive the device server without a transport."""

from __future__ import annotations

import errno
from collections.abc import Callable

import pytest

from gluster_iscsi.backstore.base import BackingStore, BackingStoreError, Capabilities, Extent
from gluster_iscsi.scsi import DeviceServer, LogicalUnit, Nexus, ScsiResult, ScsiTask
from gluster_iscsi.scsi.sense import parse_sense
from gluster_iscsi.server.runner import Runner, lu_on

GRANULE = 512


class MemStore(BackingStore):
    """bytearray-backed; tracks deallocation per 512-byte granule; can inject errors."""

    blocking = False

    def __init__(
        self, size: int, *, capabilities: Capabilities | None = None, read_only: bool = False
    ) -> None:
        self.data = bytearray(size)
        self.mapped = bytearray(size // GRANULE + 1)
        self.capabilities = capabilities or Capabilities(
            discard=True, discard_zeroes=True, write_zeroes=True, extents=True
        )
        self.read_only = read_only
        self.fail: dict[str, int] = {}  # op name -> errno to raise
        self.flushes = 0
        self.name = f"mem:{size}"

    @property
    def size(self) -> int:
        return len(self.data)

    def _maybe_fail(self, op: str) -> None:
        if op in self.fail:
            raise BackingStoreError(self.fail[op], f"injected {op} failure", self.name)

    def read_into(self, offset: int, buf: memoryview) -> None:
        self._maybe_fail("read")
        if offset + len(buf) > len(self.data):
            raise BackingStoreError(errno.EIO, "short read", self.name)
        buf[:] = self.data[offset : offset + len(buf)]

    def write(self, offset: int, data: object) -> None:
        self._maybe_fail("write")
        mv = memoryview(data).cast("B")  # type: ignore[arg-type]
        if offset + len(mv) > len(self.data):
            raise BackingStoreError(errno.ENOSPC, "write beyond end", self.name)
        self.data[offset : offset + len(mv)] = mv
        for g in range(offset // GRANULE, -(-(offset + len(mv)) // GRANULE)):
            self.mapped[g] = 1

    def flush(self) -> None:
        self._maybe_fail("flush")
        self.flushes += 1

    def discard(self, offset: int, length: int) -> None:
        self._maybe_fail("discard")
        if not self.capabilities.discard:
            raise BackingStoreError(errno.EOPNOTSUPP, "no discard", self.name)
        self.data[offset : offset + length] = bytes(length)
        for g in range(-(-offset // GRANULE), (offset + length) // GRANULE):
            self.mapped[g] = 0

    def extents(self, offset: int, length: int) -> list[Extent]:
        out: list[Extent] = []
        pos, end = offset, offset + length
        while pos < end:
            state = bool(self.mapped[pos // GRANULE])
            nxt = min((pos // GRANULE + 1) * GRANULE, end)
            if out and out[-1].mapped == state:
                last = out.pop()
                out.append(Extent(last.offset, nxt - last.offset, state))
            else:
                out.append(Extent(pos, nxt - pos, state))
            pos = nxt
        return out

    def resize(self, new_size: int) -> None:
        self.data.extend(bytes(max(0, new_size - len(self.data))))
        del self.data[new_size:]
        self.mapped.extend(bytes(new_size // GRANULE + 1 - len(self.mapped)))


N1 = Nexus(
    "iqn.2024-01.org.test:one",
    "iqn.2024-01.org.test:one,i,0x023d00000001",
    "iqn.2024-01.org.gluster:tgt,t,0x0001",
)
N2 = Nexus(
    "iqn.2024-01.org.test:two",
    "iqn.2024-01.org.test:two,i,0x023d00000002",
    "iqn.2024-01.org.gluster:tgt,t,0x0001",
)
TARGET = "iqn.2024-01.org.gluster:tgt"
BLOCKS = 2048


def make_lu(blocks: int = BLOCKS, **kw: object) -> LogicalUnit:
    caps = kw.pop("capabilities", None)
    store = MemStore(blocks * int(kw.get("block_size", 512)), capabilities=caps)  # type: ignore[arg-type]
    kw.setdefault("serial", "0123456789abcdef")
    return lu_on(store, **kw)  # type: ignore[arg-type]


class Harness:
    def __init__(self, server: DeviceServer) -> None:
        self.server = server
        self.runner = Runner()  # synchronous: every request inline, on the caller's thread

    def run(
        self,
        cdb: bytes | str,
        *,
        lun: int = 0,
        nexus: Nexus = N1,
        data: bytes | None = None,
        clear_ua: bool = True,
    ) -> ScsiResult:
        if isinstance(cdb, str):
            cdb = bytes.fromhex(cdb)
        if clear_ua:
            lu = self.server.lu(lun)
            if nexus.initiator_port not in self.server._nexuses:
                self.server.nexus_added(nexus)
            if lu is not None:
                lu.clear_ua(nexus.initiator_port)
        task = ScsiTask(
            cdb=cdb,
            lun=lun,
            nexus=nexus,
            data_out=memoryview(data) if data is not None else None,
            expected_length=len(data) if data is not None else 0,
        )
        lu = self.server.lu(lun)
        return self.runner.run(self.server.execute(task), lu)

    def sense(self, result: ScsiResult) -> tuple[int, int]:
        assert result.sense is not None, result
        return parse_sense(result.sense)


@pytest.fixture
def lu() -> LogicalUnit:
    return make_lu()


@pytest.fixture
def server(lu: LogicalUnit) -> DeviceServer:
    return DeviceServer({0: lu}, target_name=TARGET)


@pytest.fixture
def h(server: DeviceServer) -> Harness:
    return Harness(server)


@pytest.fixture
def make_harness() -> Callable[..., Harness]:
    def make(**kw: object) -> Harness:
        return Harness(DeviceServer({0: make_lu(**kw)}, target_name=TARGET))

    return make
