"""gluster-iscsi: a user-space iSCSI target for GlusterFS and plain files."""

from __future__ import annotations

__version__ = "0.1.0"

#: The data path's modules that ``setup.py`` compiles with mypyc (the one list is there).
DATA_PATH_MODULES = (
    "iscsi.pdu", "iscsi.connection", "iscsi.transfer", "iscsi.responses", "iscsi.tasks",
    "iscsi.session", "iscsi.events",
    "scsi.device", "scsi.sbc", "scsi.task", "scsi.io", "scsi.lu",
    "server.driver", "server.iopool", "server.poller", "server.runner", "server.gfaio",
    "backstore._util", "backstore.file", "backstore.cache", "buffers",
)


def compiled_modules() -> list[str]:
    """Which of :data:`DATA_PATH_MODULES` run compiled in this process (imports them)."""
    import importlib

    out = []
    for name in DATA_PATH_MODULES:
        mod = importlib.import_module(f"{__name__}.{name}")
        if not (getattr(mod, "__file__", None) or "").endswith(".py"):
            out.append(name)
    return out
