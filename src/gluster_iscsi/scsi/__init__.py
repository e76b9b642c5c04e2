"""SPC-4/SBC-3 device server without I/O.

How a transport drives it::

    server = DeviceServer({0: LogicalUnit(store, serial="...")}, target_name="iqn...")
    server.nexus_added(nexus)               # at login (POWER ON UA per I_T nexus)
    execution = server.execute(ScsiTask(cdb, lun, nexus, data_out=...))
    op = next(execution)                    # an io op; run it against
    store = io.store_for(op, server.store(lun))   # ... this store (OnStore for XCOPY)
    op = execution.send(op.run(store))      # or .throw(exc); repeat until op is a ScsiResult
    server.nexus_lost(nexus)                # session gone
    server.lun_reset(lun, nexus) / server.target_reset(nexus, cold=False)

``ScsiResult.extra["abort_initiators"]`` (PREEMPT AND ABORT) names initiator ports whose
task sets the transport should abort. :func:`.io.drive` runs an execution synchronously.

What the daemon decides per LU (``LogicalUnit(...)`` keywords): ``max_transfer_bytes``
(default 32 MiB, the iSCSI layer's largest data-out buffer), ``sanitize`` (SANITIZE
offered, default on), ``on_persist`` + :meth:`LogicalUnit.load_pr_state` (APTPL), and
``capacity_changed(size)`` after growing a store (pass the size: ``store.size`` may block).
"""

from .device import DeviceServer
from .lu import LogicalUnit
from .task import Nexus, ScsiResult, ScsiTask, Status

__all__ = ["DeviceServer", "LogicalUnit", "Nexus", "ScsiResult", "ScsiTask", "Status"]
