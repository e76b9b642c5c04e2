"""SPC-4/SBC-3 device server without I/O: see :mod:`.device` and :mod:`.task`."""

from .device import DeviceServer
from .lu import LogicalUnit
from .task import Nexus, ScsiResult, ScsiTask, Status

__all__ = ["DeviceServer", "LogicalUnit", "Nexus", "ScsiResult", "ScsiTask", "Status"]
