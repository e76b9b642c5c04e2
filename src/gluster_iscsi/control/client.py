"""A blocking client of the control API with a deadline on every call.

The CLI must never hang because the daemon does: connecting, sending and reading the reply
all count against one timeout, and every failure to reach the daemon becomes an
``ApiError("daemon_unavailable")`` whose message names the state directory.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from .config import absolute_backing, socket_path
from .protocol import API_VERSION, MAX_LINE, ApiError

DEFAULT_TIMEOUT = 10.0
TIMEOUT_ENV = "GLUSTER_ISCSI_TIMEOUT"


def default_timeout() -> float:
    try:
        return float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT))
    except ValueError:
        return DEFAULT_TIMEOUT


class Client:
    def __init__(self, state_dir: str | os.PathLike[str], timeout: float | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.path = socket_path(self.state_dir)
        self.timeout = default_timeout() if timeout is None else timeout
        self._ids = itertools.count(1)

    def _unavailable(self, why: str) -> ApiError:
        return ApiError(
            "daemon_unavailable",
            f"the gluster-iscsi daemon is not running at {self.state_dir} ({why})",
            hint=f"start it with 'gluster-iscsi --state-dir {self.state_dir} serve', or point"
            " --state-dir / GLUSTER_ISCSI_STATE_DIR at the running one",
        )

    def call(self, op: str, timeout: float | None = None, **args: Any) -> Any:
        """Run one operation; return its result or raise :class:`ApiError`."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        req_id = next(self._ids)
        if op == "lun.create" and isinstance(args.get("backing"), str):
            # Only the caller knows its working directory: a relative path is resolved here
            # and sent absolute (the daemon refuses relative ones).
            args["backing"] = absolute_backing(args["backing"], args.get("bstype"))
        payload = (
            json.dumps({"v": API_VERSION, "id": req_id, "op": op, "args": args}).encode() + b"\n"
        )
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                sock.connect(str(self.path))
            except FileNotFoundError:
                raise self._unavailable(f"no control socket {self.path}") from None
            except ConnectionRefusedError:
                raise self._unavailable(f"nothing listens on {self.path}") from None
            except PermissionError:
                raise ApiError(
                    "daemon_unavailable",
                    f"permission denied on {self.path}",
                    hint="the control socket is mode 0600: run as the daemon's user (root)",
                ) from None
            except TimeoutError:
                raise ApiError(
                    "timeout",
                    f"the daemon at {self.state_dir} did not accept a connection within"
                    f" {timeout:g}s",
                    hint="it may be hung or overloaded; check its log, or retry with --timeout",
                ) from None
            except OSError as e:
                raise self._unavailable(e.strerror or str(e)) from None
            buf = bytearray()
            try:
                sock.sendall(payload)
                while b"\n" not in buf:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError
                    sock.settimeout(left)
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise self._unavailable("it closed the connection without answering")
                    buf += chunk
                    if len(buf) > MAX_LINE:
                        raise ApiError("internal", "reply too large")
            except TimeoutError:
                raise ApiError(
                    "timeout",
                    f"the daemon at {self.state_dir} did not answer {op} within {timeout:g}s",
                    hint="it may be hung or busy; retry with a larger --timeout, or check its log",
                ) from None
            except (BrokenPipeError, ConnectionResetError):
                raise self._unavailable("it closed the connection") from None
        finally:
            sock.close()
        try:
            reply = json.loads(buf.split(b"\n", 1)[0])
        except ValueError:
            raise ApiError("internal", "the daemon sent a malformed reply") from None
        if reply.get("ok"):
            return reply.get("result")
        raise ApiError.from_json(reply.get("error") or {})
