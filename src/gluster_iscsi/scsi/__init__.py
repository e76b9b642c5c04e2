"""SPC-4/SBC-3 device server without I/O.

How a transport drives it::

    lu = LogicalUnit(store, size=..., capabilities=..., serial="...")  # told, not asked
    server = DeviceServer({0: lu}, target_name="iqn...")
    server.nexus_added(nexus)               # at login (POWER ON UA per I_T nexus)
    execution = server.execute(ScsiTask(cdb, lun, nexus, data_out=...))
    req = next(execution)                   # an io request (a plain record); do it on the
                                            # LU it names (req.lu) or else the command's,
    req = execution.send(outcome)           # or .throw(exc); repeat until req is a ScsiResult
    server.nexus_lost(nexus)                # session gone
    server.lun_reset(lun, nexus) / server.target_reset(nexus, cold=False)

LU-wide state changes (PERSISTENT RESERVE OUT, MODE SELECT) come as ``io.SharedUpdate``:
call its ``apply()`` with ``lu.state_lock`` held and send back what it returned (or throw in
what it raised); ``io.SharedRefresh`` precedes reading that state (nothing to do for a lone
gateway). A gateway group sets each LU's target port groups and access states with
``lu.alua.set_groups(...)``; until then every port is active/optimized.

``ScsiResult.extra["abort_initiators"]`` (PREEMPT AND ABORT) names initiator ports whose
task sets the transport should abort. ``server.runner.Runner`` is what does the requests
(``Runner.run`` synchronously, ``Runner.start`` on the event loop).

What the daemon decides per LU (``LogicalUnit(...)`` keywords): ``max_transfer_bytes``
(default 32 MiB, the iSCSI layer's largest data-out buffer), ``sanitize`` (SANITIZE
offered, default on), ``on_persist`` + :meth:`LogicalUnit.load_pr_state` (APTPL), and
``capacity_changed(size)`` after growing a store (the caller measured the size).
"""

from .device import DeviceServer
from .lu import LogicalUnit
from .task import Nexus, ScsiResult, ScsiTask, Status

__all__ = ["DeviceServer", "LogicalUnit", "Nexus", "ScsiResult", "ScsiTask", "Status"]
