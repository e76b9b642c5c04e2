"""The control protocol: one JSON object per line over a Unix socket, both ways.

Request::  {"v": 1, "id": 7, "op": "target.create", "args": {...}}
Reply::    {"v": 1, "id": 7, "ok": true, "result": ...}
           {"v": 1, "id": 7, "ok": false,
            "error": {"code": "not_found", "kind": "target", "message": "...", "hint": "..."}}

``code`` is one of :data:`CODES`; scripts and the CLI's exit status key off it, never off
the message text. ``kind`` says which sort of object the error is about.
"""

from __future__ import annotations

from typing import Any

API_VERSION = 1
MAX_LINE = 16 << 20  # a config with thousands of LUNs still fits

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
