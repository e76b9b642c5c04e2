"""The transport state of one SCSI command on a connection (RFC 7143 10: tasks, tags,
R2T sequences): made for every command, so a plain class with an explicit ``__init__``."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..scsi.task import ScsiTask

#: ``IscsiTask.state``: collecting its data-out, executing in the SCSI layer, or aborted (its
#: result is dropped).
COLLECTING, EXECUTING, ABORTED = 0, 1, 2


@dataclass(slots=True)
class R2tSequence:
    """One R2T's solicited burst: where it starts, how long, what arrived."""

    offset: int
    length: int
    received: int = 0
    datasn: int = 0


@dataclass(slots=True, eq=False, init=False)
class IscsiTask:
    """Transport state of one SCSI command."""

    itt: int
    lun: int
    cdb: bytes
    edtl: int
    read: bool
    write: bool
    attr: int
    cmdsn: int
    immediate: bool
    lun_raw: bytes
    buf: memoryview | None = None
    received: int = 0
    unsolicited_left: int = 0
    unsol_datasn: int = 0
    next_r2t_offset: int = 0
    r2tsn: int = 0
    r2ts: dict[int, R2tSequence] = field(default_factory=dict)
    state: int = COLLECTING
    scsi: ScsiTask | None = None
    datain_pdus: int = 0
    charge: int = 0  # read-buffer bytes charged to the memory budget (``reserve``)

    # (An explicit __init__: compiled, see setup.py, it is native and ~4x cheaper than the
    # dataclass-generated one, and one of these is made for every command.)
    def __init__(self, itt: int, lun: int, cdb: bytes, edtl: int, read: bool, write: bool,
                 attr: int, cmdsn: int, immediate: bool, lun_raw: bytes) -> None:
        self.itt = itt
        self.lun = lun
        self.cdb = cdb
        self.edtl = edtl
        self.read = read
        self.write = write
        self.attr = attr
        self.cmdsn = cmdsn
        self.immediate = immediate
        self.lun_raw = lun_raw
        self.buf = None
        self.received = 0
        self.unsolicited_left = 0
        self.unsol_datasn = 0
        self.next_r2t_offset = 0
        self.r2tsn = 0
        self.r2ts = {}
        self.state = COLLECTING
        self.scsi = None
        self.datain_pdus = 0
        self.charge = 0


__all__ = ["ABORTED", "COLLECTING", "EXECUTING", "IscsiTask"]
