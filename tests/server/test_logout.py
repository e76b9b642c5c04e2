"""Logout through a real socket while a command is still in the store (issue 16, item 1)."""

from __future__ import annotations

import asyncio
import struct

from gluster_iscsi.server.runner import lu_on

from ..iscsi import initiator as I
from .test_driver import TNAME, HangingStore, login, next_pdu, start


def test_a_logout_behind_a_running_read_is_answered_and_the_connection_closes(tmp_path):
    async def main():
        d, port = await start(tmp_path, io_timeout=20)
        hung = HangingStore(8 << 20)
        d.registry.lookup(TNAME).device.add_lun(2, lu_on(hung, serial="hung0002"))
        try:
            r, w, reader = await login(port)
            # TEST UNIT READY takes the power-on unit attention without touching the store.
            w.write(I.scsi_cmd(b"\x00" + bytes(5), itt=9, cmdsn=1, lun=2))
            rsp = await next_pdu(r, reader)
            assert rsp.opcode == 0x21 and rsp.itt == 9
            cdb = struct.pack(">BBIBHB", 0x28, 0, 0, 0, 2048, 0)  # 1 MiB, stuck in the store
            w.write(I.scsi_cmd(cdb, itt=10, cmdsn=2, edtl=1 << 20, read=True, lun=2))
            w.write(I.logout(itt=11, cmdsn=3))
            (drv,) = d.connections
            while not drv.conn.logging_out:  # the Logout was taken in behind the READ
                await asyncio.sleep(0.01)
            hung.release.set()
            rsp = await next_pdu(r, reader, timeout=10)
            assert rsp.opcode == 0x26 and rsp.itt == 11 and rsp.b2 == 0  # no Data-In first
            assert await next_pdu(r, reader, timeout=10) is None  # and the target closes
            w.close()
        finally:
            hung.release.set()
            await d.stop()

    asyncio.run(main())
