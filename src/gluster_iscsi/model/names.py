"""iSCSI name rules (RFC 7143 section 4.2.7, RFC 3720 section 3.2.6.3, RFC 3722, RFC 3980).

Three formats:

* ``iqn.YYYY-MM.reversed.domain[:anything]`` -- the date is the year and month the naming
  authority owned the domain; the authority is a reversed DNS name.
* ``eui.`` followed by 16 hex digits (an EUI-64).
* ``naa.`` followed by 16 or 32 hex digits (an NAA identifier, RFC 3980).

A name is at most 223 bytes of UTF-8. After stringprep (RFC 3722) it holds only lower-case
letters, digits, ``-``, ``.`` and ``:`` (we do not run stringprep: non-ASCII names are
refused in strict mode rather than normalized behind the admin's back).

The native CLI is strict; tgt is lenient (it accepts the cookbook's ``iqn.20013-10...``).
:func:`check_name` returns every problem; :func:`validate_name` raises on them unless
forced, in which case they come back as warnings that say why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_NAME_BYTES = 223

_IQN_DATE = re.compile(r"^iqn\.(\d{4})-(\d{2})\.")
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_ALLOWED = re.compile(r"^[a-z0-9.:-]+$")
_HEX = re.compile(r"^[0-9a-fA-F]+$")


class InvalidName(ValueError):
    """An iSCSI name that breaks the rules; ``problems`` says each way it does."""

    def __init__(self, name: str, problems: list[str]) -> None:
        self.name = name
        self.problems = problems
        super().__init__(f"invalid iSCSI name {name!r}: " + "; ".join(problems))


@dataclass(frozen=True, slots=True)
class NameCheck:
    name: str
    kind: str | None  # "iqn", "eui", "naa" or None (unknown prefix)
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def check_name(name: str) -> NameCheck:
    """Every way ``name`` breaks RFC 7143/3722 (an empty tuple when it is valid)."""
    problems: list[str] = []
    if not name:
        return NameCheck(name, None, ("the name is empty",))
    size = len(name.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        problems.append(f"it is {size} bytes long; an iSCSI name is at most {MAX_NAME_BYTES}")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        problems.append("it contains white space or control characters")
    lowered = name.lower()
    kind: str | None = None
    if lowered.startswith("iqn."):
        kind = "iqn"
        problems += _check_iqn(name)
    elif lowered.startswith("eui."):
        kind = "eui"
        problems += _check_hex(name, "eui", (16,))
    elif lowered.startswith("naa."):
        kind = "naa"
        problems += _check_hex(name, "naa", (16, 32))
    else:
        problems.append("it must start with iqn., eui. or naa.")
    return NameCheck(name, kind, tuple(problems))


def _check_iqn(name: str) -> list[str]:
    problems: list[str] = []
    if name != name.lower():
        problems.append(
            f"iSCSI names are case-insensitive and stored in lower case: use {name.lower()!r}"
        )
    name = name.lower()
    if not _ALLOWED.match(name):
        bad = sorted({c for c in name if not _ALLOWED.match(c)})
        problems.append(
            "only lower-case letters, digits, '-', '.' and ':' are allowed"
            f" (found {''.join(bad)!r})"
        )
    m = _IQN_DATE.match(name)
    loose = re.match(r"^iqn\.([^.:]*)", name)
    if not m and loose and re.match(r"^\d+-\d+$", loose.group(1)):
        problems.append(
            f"the date {loose.group(1)!r} after 'iqn.' is not yyyy-mm (a 4-digit year and a"
            " 2-digit month, e.g. 2013-10)"
        )
        return problems
    if not m:
        problems.append(
            "an iqn. name needs a date yyyy-mm right after 'iqn.'"
            " (e.g. iqn.2013-10.com.example:disk1): the year and month the domain was owned"
        )
        return problems
    month = int(m.group(2))
    if not 1 <= month <= 12:
        problems.append(f"the month in the date {m.group(1)}-{m.group(2)} is not 01..12")
    rest = name[m.end() :]
    authority = rest.split(":", 1)[0]
    if not authority:
        problems.append(
            "the naming authority (a reversed domain name, e.g. com.example) is missing"
        )
    else:
        for label in authority.split("."):
            if not _LABEL.match(label):
                problems.append(
                    f"the naming authority {authority!r} is not a reversed domain name"
                    f" (bad label {label!r})"
                )
                break
    if ":" in rest and not rest.split(":", 1)[1]:
        problems.append("nothing follows the ':' separator")
    return problems


def _check_hex(name: str, kind: str, lengths: tuple[int, ...]) -> list[str]:
    digits = name[4:]
    want = " or ".join(str(n) for n in lengths)
    if not _HEX.match(digits or "-") or len(digits) not in lengths:
        return [f"an {kind}. name is '{kind}.' followed by exactly {want} hex digits"]
    return []


def validate_name(name: str, *, force: bool = False) -> list[str]:
    """Raise :class:`InvalidName` unless ``name`` is valid; with ``force`` return warnings.

    Even forced, a name must be non-empty, at most 223 bytes and free of white space: those
    break the wire protocol itself, not just the naming convention.
    """
    check = check_name(name)
    if check.ok:
        return []
    fatal = [
        p
        for p in check.problems
        if p.startswith("the name is empty") or "bytes long" in p or "white space" in p
    ]
    if not force or fatal:
        raise InvalidName(name, list(fatal if force else check.problems))
    return [f"{name}: {p}" for p in check.problems]


def lenient_warnings(name: str) -> list[str]:
    """What tgt would accept silently but we point out (the tgtadm front end's check)."""
    return validate_name(name, force=True)


def is_network(value: str) -> bool:
    """True for ``ALL``, an IPv4/IPv6 address or a CIDR network."""
    import ipaddress

    if value.upper() == "ALL":
        return True
    try:
        ipaddress.ip_network(value.split("%", 1)[0], strict=False)
    except ValueError:
        return False
    return True
