"""Sizes as people write them, both ways.

``parse_size`` follows the storage convention of tgt and qemu-img: ``K``/``M``/``G``/``T``/``P``
with or without ``iB`` are powers of 1024; an explicit SI unit (``KB``, ``MB``, ``GB``, ``TB``,
``PB``) means powers of 1000; a plain number (or ``B``) is bytes.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_BINARY = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}
_SIZE_RE = re.compile(r"^\s*(?P<num>\d+(?:\.\d+)?|\.\d+)\s*(?P<unit>[a-z]*)\s*$", re.IGNORECASE)

def parse_size(text: str | int) -> int:
    """``"10GiB"``, ``"512M"``, ``"1T"``, ``"4096"``, ``"1.5G"`` -> bytes (an exact integer)."""
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"negative size {text}")
        return text
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"invalid size {text!r} (try 10GiB, 512M, 4096)")
    unit = m.group("unit").lower()
    if unit in ("", "b"):
        factor = 1
    elif unit[0] in _BINARY and unit[1:] in ("", "ib"):
        factor = 1024 ** _BINARY[unit[0]]
    elif unit[0] in _BINARY and unit[1:] == "b":
        factor = 1000 ** _BINARY[unit[0]]
    else:
        raise ValueError(f"unknown size unit {m.group('unit')!r} in {text!r}")
    try:
        value = Decimal(m.group("num")) * factor
    except InvalidOperation as e:  # pragma: no cover - the regex admits only numbers
        raise ValueError(f"invalid size {text!r}") from e
    if value != value.to_integral_value():
        raise ValueError(f"{text!r} is not a whole number of bytes")
    return int(value)


def format_size(n: int) -> str:
    """The largest binary unit that divides ``n`` exactly: 10737418240 -> ``"10GiB"``."""
    for unit, power in (("EiB", 6), ("PiB", 5), ("TiB", 4), ("GiB", 3), ("MiB", 2), ("KiB", 1)):
        if n and n % (1024**power) == 0:
            return f"{n // 1024**power}{unit}"
    return str(n)
