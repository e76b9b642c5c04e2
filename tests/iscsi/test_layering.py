"""The iSCSI core depends on a protocol it defines (``iscsi.portal``), not on the layers above."""

from __future__ import annotations

import ast
from pathlib import Path

from gluster_iscsi.iscsi import connection, portal
from gluster_iscsi.model.targets import ChapAccount, Portal, Target, TargetRegistry

ISCSI = Path(connection.__file__).parent
FORBIDDEN = ("model", "server", "control", "cli")


def _imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            dots = "." * node.level
            out.append(f"{dots}{node.module or ''}")
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return out


def test_iscsi_imports_nothing_from_target_server_control_or_cli():
    bad = []
    for path in sorted(ISCSI.glob("*.py")):
        for name in _imports(path):
            parts = name.lstrip(".").split(".")
            up = name.startswith("..") or name.startswith("gluster_iscsi.")
            first = parts[1] if name.startswith("gluster_iscsi.") else parts[0]
            if up and first in FORBIDDEN:
                bad.append(f"{path.name}: {name}")
    assert bad == []


def test_the_target_model_satisfies_the_iscsi_protocols():
    # Structural: mypy checks it where the daemon hands its registry in; this pins it at run
    # time too, against the very members the iSCSI layer uses.
    account = ChapAccount("u", "secret123456")
    t = Target("iqn.2026-11.org.example:t", 1, alias="a", incoming=[account])
    reg = TargetRegistry(targets={t.name: t}, portals=[Portal("127.0.0.1")])
    for cls, obj in ((portal.TargetDirectory, reg), (portal.TargetEntry, t),
                     (portal.ChapSecret, account), (portal.AdvertisedPortal, reg.portals[0])):
        members = {m for m in vars(cls) if not m.startswith("_")}
        assert members and all(hasattr(obj, m) for m in members), cls.__name__
    assert reg.lookup(t.name) is t and t.chap_for("iqn.x")[0] == [account]
    # The modules that took the model's classes now name only the protocols (read from the
    # source: compiled, the annotations are not kept as written).
    assert "target: TargetEntry | None" in (ISCSI / "session.py").read_text()
    assert "accounts: Sequence[ChapSecret]" in (ISCSI / "chap.py").read_text()
