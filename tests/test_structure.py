"""The house as a newcomer sees it: folders, their roles, and which way the imports run.

Every import of every module counts: at the top, inside functions (a lazy import that dodges
a cycle is still that cycle) and, for the layers, under ``TYPE_CHECKING``. Two rules:

1. no import cycle between files among the imports that run (eager or lazy). Names imported
   only for annotations (under ``TYPE_CHECKING``) may close a loop inside one package: that
   is how a handler module of ``scsi/`` names ``LogicalUnit`` while ``lu.py`` imports the
   handlers' helpers; across packages the layers below already forbid it;
2. the layers: the neutral top-level modules (``logs.py``, ``__init__.py``, the buffer pool
   ...) < ``backstore`` < ``group`` < ``scsi`` < ``iscsi`` < ``model`` < ``server`` < ``control`` <
   ``cli``; nothing imports a higher layer, and some lower arrows are closed too (``FORBIDDEN``:
   the protocol cores import no store, the iSCSI core no store either).

``scripts/structure`` (or ``python tests/test_structure.py``) prints the tree, each folder's
role and the arrows between packages, for docs/DESIGN.md.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "gluster_iscsi"

#: Layers, lowest first. A module's layer is that of its longest dotted prefix here (below
#: the package name); a top-level module not listed is neutral (it may import only neutral
#: modules), except the entry point.
LAYERS: list[tuple[str, list[str]]] = [
    ("neutral", ["", "systemd"]),
    ("backstore", ["backstore"]),
    ("group", ["group"]),
    ("scsi", ["scsi"]),
    ("iscsi", ["iscsi"]),
    ("model", ["model"]),
    ("server", ["server"]),
    ("control", ["control"]),
    ("cli", ["cli", "systemd.unit"]),
    ("entry", ["__main__"]),
]

#: Arrows closed although they point down: (from layer, to layer).
FORBIDDEN: set[tuple[str, str]] = {
    ("iscsi", "backstore"),  # the iSCSI core neither stores nor owns buffers of a store
    ("scsi", "backstore"),  # handlers yield requests; stores are called by the server
    ("iscsi", "group"),  # the protocol cores do no I/O: the group directory is the server's
    ("scsi", "group"),
}

#: One line per folder (and for the neutral top-level modules), for the printed tree.
ROLES: dict[str, str] = {
    "": "neutral top-level modules: version and compiled-module list, logging, buffer pool",
    "backstore": "byte-level backing stores: memory, file, gfapi; specs, sizes, provisioning",
    "backstore/gfapi": "our ctypes binding of libgfapi, and the store on it",
    "group": "the gateway group's storage: group directory, records, locks, identity, definition",
    "scsi": "SPC-4/SBC-3 device server without I/O: one opcode table, sense, reservations",
    "iscsi": "RFC 7143 without I/O: PDUs, text keys, CHAP, login and full-feature phases",
    "model": "the model: targets, portals, ACLs, CHAP accounts, names (not LUNs)",
    "server": "the asyncio adapter: listeners, connection drivers, store executors, daemon",
    "control": "the management API on a Unix socket, config persistence, reconcile",
    "cli": "the command line, including the tgtadm-compatible front end",
    "systemd": "sd_notify for the daemon, unit files for the CLI",
}


# ------------------------------------------------------------------------------ analysis


def modules(src: Path = SRC, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every module of ``package`` under ``src``."""
    out = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the import statements inside ``if TYPE_CHECKING:`` blocks."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for stmt in node.body:
                for inner in ast.walk(stmt):
                    if isinstance(inner, ast.Import | ast.ImportFrom):
                        out.add(id(inner))
    return out


def imports(src: Path = SRC, package: str = PACKAGE, *,
            type_only: bool = True) -> dict[str, dict[str, int]]:
    """Module -> {module it imports: first line}, for imports of ``package`` itself.

    ``from .x import name`` is an arrow to module ``.x.name`` when that is a module, else to
    ``.x``. Every ``import`` statement counts, wherever it is; with ``type_only=False``, not
    those under ``if TYPE_CHECKING:`` (they never run).
    """
    mods = modules(src, package)
    out: dict[str, dict[str, int]] = {}
    for name, path in mods.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        arrows: dict[str, int] = {}
        tree = ast.parse(path.read_text(), str(path))
        skip = set() if type_only else _type_checking_nodes(tree)
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[: len(here.split(".")) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod
                           for a in node.names]
            for t in targets:
                while t and t not in mods and "." in t:  # import a.b.c of a name in a.b
                    t = t.rpartition(".")[0]
                if t in mods and t != name:
                    arrows.setdefault(t, node.lineno)
        out[name] = arrows
    return out


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, {}))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, {})))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on_stack.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def cycle_text(graph: dict[str, dict[str, int]], comp: list[str], package: str = PACKAGE) -> str:
    """One cycle of the component, as ``a -> b (line) -> a``: something to go and cut."""
    members = set(comp)
    path = [comp[0]]
    seen = {comp[0]: 0}
    while True:
        nxt = sorted(m for m in graph[path[-1]] if m in members)
        step = next((m for m in nxt if m == comp[0] or m not in seen), nxt[0])
        if step in seen:
            path = path[seen[step]:] + [step]
            break
        seen[step] = len(path)
        path.append(step)
    short = [p.removeprefix(package + ".") for p in path]
    hops = [f"{short[i]} -> {short[i + 1]} (line {graph[path[i]][path[i + 1]]})"
            for i in range(len(path) - 1)]
    return "; ".join(hops)


def layer_of(module: str, package: str = PACKAGE) -> str | None:
    """The layer of a dotted module name (None: not placed in LAYERS)."""
    rel = module.removeprefix(package).lstrip(".")
    best: tuple[int, str] | None = None
    for layer, prefixes in LAYERS:
        for p in prefixes:
            if p and (rel == p or rel.startswith(p + ".")):
                if best is None or len(p) > best[0]:
                    best = (len(p), layer)
    if best is not None:
        return best[1]
    return "neutral" if "." not in rel else None


def folder_of(module: str, package: str = PACKAGE) -> str:
    rel = module.removeprefix(package).lstrip(".")
    return rel.partition(".")[0] if "." in rel else ""


def violations(graph: dict[str, dict[str, int]], package: str = PACKAGE) -> list[str]:
    """Every arrow that points to a higher layer or is in FORBIDDEN, and unplaced modules."""
    rank = {layer: i for i, (layer, _) in enumerate(LAYERS)}
    out = []
    for src_mod in sorted(graph):
        a = layer_of(src_mod, package)
        if a is None:
            out.append(f"{src_mod}: in no layer (add its folder to LAYERS and ROLES)")
            continue
        for dst, line in sorted(graph[src_mod].items()):
            b = layer_of(dst, package)
            if b is None or a == b:
                continue
            if rank[b] > rank[a] or (a, b) in FORBIDDEN or (a == "neutral" and b != "neutral"):
                out.append(f"{src_mod.removeprefix(package + '.')}:{line} -> "
                           f"{dst.removeprefix(package + '.')} ({a} -> {b})")
    return out


def package_arrows(graph: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """Layer -> {layer it imports: how many file-level arrows}."""
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for src_mod, dsts in graph.items():
        a = layer_of(src_mod) or "?"
        for dst in dsts:
            b = layer_of(dst) or "?"
            if a != b:
                out[a][b] = out[a].get(b, 0) + 1
    return out


def report() -> str:
    """The folder tree with roles, then the arrows between layers, lowest layer first."""
    graph = imports()
    mods = modules()
    lines = ["src/gluster_iscsi/"]
    folders = sorted({str(p.parent.relative_to(SRC / PACKAGE)) for p in mods.values()} - {"."})
    top = sorted(p.name for p in mods.values() if p.parent == SRC / PACKAGE)
    lines.append(f"  {'(top)':<18}{ROLES['']}")
    lines.append(f"  {'':<18}  {', '.join(top)} (__main__.py: the entry point, above cli)")
    for folder in folders:
        files = sorted(p.name for p in mods.values() if p.parent == SRC / PACKAGE / folder)
        depth = folder.count("/")
        name = "  " * depth + folder.rpartition("/")[2] + "/"
        lines.append(f"  {name:<18}{ROLES.get(folder, '(no role written: add one to ROLES)')}")
        lines.append(f"  {'':<18}  {', '.join(f for f in files)}")
    lines.append("")
    lines.append("imports between layers (file-level arrows), lowest layer first:")
    arrows = package_arrows(graph)
    rank = {layer: i for i, (layer, _) in enumerate(LAYERS)}
    for layer, _ in LAYERS:
        dsts = arrows.get(layer, {})
        shown = ", ".join(f"{b} ({n})" for b, n in sorted(dsts.items(), key=lambda x: rank.get(x[0], 99)))
        lines.append(f"  {layer:<10}-> {shown or 'nothing'}")
    bad = violations(graph)
    running = imports(type_only=False)
    comps = cycles(running)
    lines.append("")
    lines.append(f"arrows against the layers: {len(bad)}" + "".join(f"\n  {b}" for b in bad))
    lines.append(f"import cycles between files (imports that run): {len(comps)}"
                 + "".join(f"\n  {cycle_text(running, c)}" for c in comps))
    return "\n".join(lines)


# --------------------------------------------------------------------------------- tests


def test_no_import_cycles_between_files():
    graph = imports(type_only=False)
    comps = cycles(graph)
    assert not comps, "import cycles (every import that runs counts, lazy ones too):\n" + \
        "\n".join(f"  {', '.join(c)}\n    e.g. {cycle_text(graph, c)}" for c in comps)


def test_no_import_runs_against_the_layers():
    bad = violations(imports())
    order = " < ".join(layer for layer, _ in LAYERS)
    closed = ", ".join(f"{a} -> {b}" for a, b in sorted(FORBIDDEN))
    assert not bad, f"layers {order} (closed too: {closed}); arrows that break them:\n  " + \
        "\n  ".join(bad)


def test_every_folder_has_a_role():
    folders = {str(p.parent.relative_to(SRC / PACKAGE)) for p in modules().values()} - {"."}
    assert not sorted(folders - set(ROLES)), "add a one-line role to ROLES"


def test_the_report_prints(capsys):
    print(report())  # shown with -s, and by scripts/structure
    assert "imports between layers" in capsys.readouterr().out


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_the_checker_sees_lazy_and_type_checking_imports(tmp_path):
    """The checker itself: a cycle made only of a function-level import and a TYPE_CHECKING
    one is found; so is an arrow up the layers inside a function."""
    src = _tree(tmp_path, {
        "__init__.py": "",
        "scsi/__init__.py": "",
        "scsi/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n",
        "scsi/b.py": "def f():\n    from . import a\n    from ..server import d\n",
        "server/__init__.py": "",
        "server/d.py": "import pkg.scsi.a\n",
    })
    graph = imports(src, "pkg")
    assert graph["pkg.scsi.a"] == {"pkg.scsi.b": 3}
    assert graph["pkg.scsi.b"] == {"pkg.scsi.a": 2, "pkg.server.d": 3}
    assert graph["pkg.server.d"] == {"pkg.scsi.a": 1}
    assert cycles(graph) == [["pkg.scsi.a", "pkg.scsi.b", "pkg.server.d"]]
    assert violations(graph, "pkg") == ["scsi.b:3 -> server.d (scsi -> server)"]
    # the imports that run: without a's TYPE_CHECKING arrow the loop is open, the lazy
    # arrow up the layers stays
    running = imports(src, "pkg", type_only=False)
    assert running["pkg.scsi.a"] == {}
    assert cycles(running) == []
    assert violations(running, "pkg") == ["scsi.b:3 -> server.d (scsi -> server)"]


def test_a_lazy_import_that_closes_a_loop_is_a_cycle(tmp_path):
    src = _tree(tmp_path, {
        "__init__.py": "",
        "scsi/__init__.py": "",
        "scsi/a.py": "from . import b\n",
        "scsi/b.py": "def f():\n    from . import a\n",
    })
    assert cycles(imports(src, "pkg", type_only=False)) == [["pkg.scsi.a", "pkg.scsi.b"]]



def test_every_module_is_on_the_design_map():
    """docs/DESIGN.md's map names every module (a newcomer finds any behaviour from it)."""
    text = (ROOT / "docs" / "DESIGN.md").read_text()
    block = text[text.index("```\nsrc/gluster_iscsi/"):]
    block = block[: block.index("\n```", 4)]
    missing = []
    for path in modules().values():
        rel = path.relative_to(SRC / PACKAGE)
        if path.name == "__init__.py" and rel.parent != Path("."):
            folder = f"{rel.parent.name}/"
            if folder not in block:
                missing.append(str(rel.parent) + "/")
            continue
        if path.name not in block:
            missing.append(str(rel))
    assert not missing, f"add these to the map in docs/DESIGN.md: {missing}"

if __name__ == "__main__":
    print(report())
    sys.exit(0)
