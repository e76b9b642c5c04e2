"""Output helpers: JSON for scripts, aligned tables and sizes with units for people."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import click

from ..control.protocol import ApiError


def human_size(n: int | None) -> str:
    """1073741824 -> '1 GiB', 1610612736 -> '1.5 GiB', 0 -> '0 B', None -> '-'."""
    if n is None:
        return "-"
    for unit, power in (("PiB", 5), ("TiB", 4), ("GiB", 3), ("MiB", 2), ("KiB", 1)):
        scale = 1024**power
        if n >= scale:
            v = n / scale
            text = f"{v:.1f}".rstrip("0").rstrip(".") if v < 100 else f"{v:.0f}"
            return f"{text} {unit}"
    return f"{n} B"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def fail(err: ApiError, *, as_json: bool = False, prog: str = "gluster-iscsi") -> None:
    """Report an API error and exit with its documented status."""
    if as_json:
        click.echo(json.dumps({"ok": False, "error": err.to_json()}, indent=2))
    click.echo(f"{prog}: error: {err.message}", err=True)
    if err.hint:
        click.echo(f"{prog}: hint: {err.hint}", err=True)
    sys.exit(err.exit_code)
