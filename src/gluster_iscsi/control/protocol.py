"""The control protocol: one JSON object per line over a Unix socket, both ways.

Request::  {"v": 1, "id": 7, "op": "target.create", "args": {...}}
Reply::    {"v": 1, "id": 7, "ok": true, "result": ...}
           {"v": 1, "id": 7, "ok": false,
            "error": {"code": "not_found", "kind": "target", "message": "...", "hint": "..."}}

``code`` is one of :data:`CODES`; scripts and the CLI's exit status key off it, never off
the message text. ``kind`` says which sort of object the error is about.
"""

from __future__ import annotations

import functools
import inspect
import json
import types
import typing
from collections.abc import Callable
from typing import Any, Union

API_VERSION = 1
MAX_LINE = 16 << 20  # a config with thousands of LUNs still fits
#: How deep a request's JSON may nest. A config is 8 levels deep inside a request; anything
#: much deeper is not a request (and would exhaust the parser's recursion).
MAX_DEPTH = 32

#: error code -> CLI exit status (documented in ``gluster-iscsi --help``).
CODES: dict[str, int] = {
    "internal": 1,
    "bad_request": 2,
    "unsupported_version": 2,
    "daemon_unavailable": 3,
    "not_found": 4,
    "exists": 5,
    "invalid": 6,
    "busy": 7,
    "timeout": 8,
    "unavailable": 9,  # a backing store or address that cannot be opened right now
}


class ApiError(Exception):
    """An error the API reports to its caller (never a crash of the daemon)."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        kind: str | None = None,
        hint: str | None = None,
        field: str | None = None,
    ) -> None:
        assert code in CODES, code
        super().__init__(message)
        self.code = code
        self.message = message
        self.kind = kind
        self.hint = hint
        self.field = field

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.kind:
            out["kind"] = self.kind
        if self.hint:
            out["hint"] = self.hint
        if self.field:
            out["field"] = self.field
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ApiError:
        code = data.get("code", "internal")
        return cls(
            code if code in CODES else "internal",
            str(data.get("message", "unknown error")),
            kind=data.get("kind"),
            hint=data.get("hint"),
            field=data.get("field"),
        )

    def __str__(self) -> str:
        return self.message + (f" ({self.hint})" if self.hint else "")

    @property
    def exit_code(self) -> int:
        return CODES[self.code]


# ----------------------------------------------------------------------- request checks
#
# The schema of each operation is its method's signature: argument names, which are
# required, and their types from the annotations (one place per fact; no second table to
# drift). ``check_args`` holds a request to it before the method runs, so a wrong type is a
# clear ``bad_request`` and never reaches the code (``{"target": true}`` is not tid 1).


def check_depth(value: Any, limit: int = MAX_DEPTH) -> None:
    """Refuse a decoded request that nests deeper than ``limit`` (iteratively: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict | list):
            if depth > limit:
                raise ApiError("bad_request", f"the request nests deeper than {limit} levels")
            items = v.values() if isinstance(v, dict) else v
            stack.extend((x, depth + 1) for x in items if isinstance(x, dict | list))


_NAMES: dict[Any, str] = {
    str: "a string",
    int: "a whole number",
    float: "a number",
    bool: "true or false",
    type(None): "null",
}


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if hint is dict or origin is dict:
        return "an object"
    if hint is list or origin is list:
        return "a list"
    return _NAMES.get(hint, str(hint))


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is dict or origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    if hint is list or origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and (item is Any or all(_matches(x, item) for x in value))
    raise TypeError(f"an operation argument annotated {hint!r} cannot be checked")


@functools.cache
def op_schema(fn: Callable[..., Any]) -> dict[str, tuple[Any, bool]]:
    """name -> (type, required) of an op method's arguments, from its signature."""
    hints = typing.get_type_hints(fn)
    out = {}
    for name, p in inspect.signature(fn).parameters.items():
        if name == "self":
            continue
        if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            raise TypeError(f"{fn.__qualname__}: argument {name} must be a plain keyword")
        _matches(object(), hints[name])  # a type it cannot check is a TypeError here
        out[name] = (hints[name], p.default is p.empty)
    return out


def check_args(op: str, fn: Callable[..., Any], args: dict[str, Any]) -> None:
    """Hold ``args`` to the schema of ``fn`` (names, required ones, types)."""
    schema = op_schema(getattr(fn, "__func__", fn))
    for name, value in args.items():
        if name not in schema:
            known = ", ".join(schema) or "none"
            raise ApiError(
                "bad_request", f"{op} has no argument {name!r} (it takes: {known})", field=name
            )
        hint, _ = schema[name]
        if not _matches(value, hint):
            raise ApiError(
                "bad_request",
                f"{op}: argument {name!r} must be {_describe(hint)}, not {json.dumps(value)[:60]}",
                field=name,
            )
    missing = [n for n, (_, required) in schema.items() if required and n not in args]
    if missing:
        raise ApiError(
            "bad_request",
            f"{op} needs argument{'s' if len(missing) > 1 else ''} {', '.join(missing)}",
            field=missing[0],
        )
