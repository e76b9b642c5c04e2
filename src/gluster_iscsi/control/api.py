"""The control API: a versioned JSON protocol on a Unix socket (mode 0600) in the state dir.

Every mutating operation follows one path (:meth:`ControlServer._mutate`): take a copy of
the applied config, edit it, validate the whole document, let ``reconcile.apply`` change
only the difference in the running daemon, then save the config atomically. So the file on
disk is always what runs, a bad request changes nothing, and a reload, a ``config apply``
and a single ``lun create`` are the same mechanism.

Operations are plain methods named ``op_<area>_<verb>`` (``target.create`` ->
``op_target_create``), so the op table is the class itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..backstore import cache as read_cache
from ..model.names import InvalidName, is_network, validate_name
from . import config as cfgmod
from . import exposure, reconcile
from .interface import DaemonControl
from .protocol import API_VERSION, MAX_DEPTH, MAX_LINE, ApiError, check_args, check_depth

log = logging.getLogger(__name__)

#: A target named by IQN, alias or tid; a size as bytes or text ("10GiB").
TargetRef = str | int
Size = str | int

DEFAULT_OP_TIMEOUT = 120.0
#: Ops that may legitimately run long (writing zeroes over a new 1 TiB LUN).
LONG_OPS = {"lun.create": 3600.0}
IDLE_TIMEOUT = 60.0
#: How long the start waits for the group definition to be in force before opening portals.
FIRST_REFRESH_TIMEOUT = 30.0
#: The longest wait between two tries of a definition version that failed to apply here
#: (the waits double from one beat; a newer version is tried at once).
RETRY_MAX = 30.0


class _NotRetried(Exception):
    """The definition version that failed here is unchanged and its next try is not due."""
SIZE_TIMEOUT = 3.0  # how long 'list' waits for a store to say its size


class UnsavedChange(ApiError):
    """A change that was applied but could not be saved; ``undone``: it was taken back."""

    def __init__(self, code: str, message: str, *, undone: bool, hint: str | None = None) -> None:
        super().__init__(code, message, kind="config", hint=hint)
        self.undone = undone


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("gluster-iscsi")
    except Exception:  # pragma: no cover - not installed
        return "unknown"


class ControlServer:
    def __init__(self, daemon: DaemonControl, *, op_timeout: float = DEFAULT_OP_TIMEOUT) -> None:
        self.daemon = daemon
        #: What is applied to the daemon; the restore at start and SIGHUP use it too.
        self.reconciler = reconcile.Reconciler(daemon)
        self.state_dir = Path(daemon.state_dir)
        self.op_timeout = op_timeout
        self._server: asyncio.AbstractServer | None = None
        self._path: Path | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._group_task: asyncio.Task[None] | None = None
        #: the definition version whose apply failed here last (None: none did)
        self._failed_version: int | None = None
        #: the poll's clock (monotonic seconds)
        self.clock: Callable[[], float] = time.monotonic
        #: the daemon's group member (``server.group.GroupMember``, set by ``serve`` when it
        #: joins): group LUNs are attached to it as they open, detached once closed
        self.group_member: Any = None
        #: id(new LU) -> (its key, the side key of the LU it replaces, attached until closed)
        self._replacing: dict[int, tuple[str, str]] = {}

    # ------------------------------------------------------------------ lifecycle

    async def start(self, socket_path: str | os.PathLike[str] | None = None) -> None:
        path = Path(socket_path) if socket_path else cfgmod.socket_path(self.state_dir)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if path.exists() or path.is_symlink():
            if _alive(path):
                raise RuntimeError(
                    f"another gluster-iscsi daemon is already running at {path.parent}"
                    f" (its control socket {path} answers)"
                )
            path.unlink()
        # No other daemon owns the state dir: what a crash mid-save left is garbage.
        for tmp in cfgmod.remove_stale_temp_files(self.state_dir):
            log.info("removed %s, left by an interrupted config save", tmp)
        # Bind with a restrictive umask so the socket is never briefly world-connectable;
        # restore it on every path (rtslib's bug was not doing so).
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._handle, path=str(path), limit=MAX_LINE
            )
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self._path = path
        log.info("control API listening on %s", path)
        self.start_group()
        if self.reconciler.group_link is not None:
            # The group's targets before the portals open (serve opens them after this), so
            # initiators logging in at once find them; a volume that does not answer in time
            # delays nothing more: the poll goes on applying it.
            try:
                first = asyncio.ensure_future(self.refresh_group())  # not cancelled mid-apply
                await asyncio.wait_for(asyncio.shield(first), FIRST_REFRESH_TIMEOUT)
            except Exception as e:  # noqa: BLE001 - logged; the poll retries every beat
                log.error("group: the group definition is not in force yet: %s",
                          str(e) or repr(e))

    async def stop(self) -> None:
        await self.stop_group()
        if self._server is not None:
            self._server.close()
            for t in list(self._tasks):
                t.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None
        if self._path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()
            self._path = None

    # ------------------------------------------------------------------ transport

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            while True:
                too_long = False
                try:
                    line = await asyncio.wait_for(reader.readline(), IDLE_TIMEOUT)
                except ValueError:  # longer than MAX_LINE: answer, then hang up
                    line, too_long = b"", True
                except (TimeoutError, ConnectionError):
                    break
                if not line and not too_long:
                    break
                reply = await self.handle_line(line) if not too_long else _too_long()
                writer.write(json.dumps(reply).encode() + b"\n")
                try:
                    await asyncio.wait_for(writer.drain(), IDLE_TIMEOUT)
                except (TimeoutError, ConnectionError):
                    break
                if too_long:  # the rest of that line is still unread
                    break
        finally:
            if task is not None:
                self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def handle_line(self, line: bytes) -> dict[str, Any]:
        req_id = None
        try:
            if len(line) > MAX_LINE:
                return _too_long()
            try:
                req = json.loads(line)
            except ValueError:
                raise ApiError("bad_request", "the request is not valid JSON") from None
            except RecursionError:  # deeper than the parser goes
                raise ApiError(
                    "bad_request", f"the request nests deeper than {MAX_DEPTH} levels"
                ) from None
            check_depth(req)
            if not isinstance(req, dict):
                raise ApiError("bad_request", "the request must be a JSON object")
            req_id = req.get("id")
            if not isinstance(req_id, int | str | None) or isinstance(req_id, bool):
                req_id = None
            if req.get("v", API_VERSION) != API_VERSION:
                raise ApiError(
                    "unsupported_version",
                    f"API version {req.get('v')!r} is not supported; this daemon speaks"
                    f" {API_VERSION}",
                    hint="use a CLI of the same gluster-iscsi version as the daemon",
                )
            result = await self.call(str(req.get("op", "")), req.get("args") or {})
            return {"v": API_VERSION, "id": req_id, "ok": True, "result": result}
        except ApiError as e:
            return {"v": API_VERSION, "id": req_id, "ok": False, "error": e.to_json()}

    async def call(self, op: str, args: dict[str, Any]) -> Any:
        """Run one operation by name (also used in-process by tests and the daemon)."""
        fn: Callable[..., Any] | None = getattr(self, "op_" + op.replace(".", "_"), None)
        if fn is None or not callable(fn) or not op or op.startswith("_"):
            raise ApiError("bad_request", f"unknown operation {op!r}", hint="see 'ops'")
        if not isinstance(args, dict):
            raise ApiError("bad_request", "args must be an object")
        check_args(op, fn, args)
        # The work is shielded: a timed-out caller gets an answer, the change still finishes
        # (cancelling a half-applied change would be worse than finishing it).
        work = asyncio.ensure_future(self._invoke(fn, args))
        try:
            limit = max(self.op_timeout, LONG_OPS.get(op, 0.0))
            return await asyncio.wait_for(asyncio.shield(work), limit)
        except TimeoutError:
            raise ApiError(
                "timeout",
                f"{op} did not finish within {limit:g}s; it goes on in the background",
                hint="check 'gluster-iscsi config export' in a moment",
            ) from None

    async def _invoke(self, fn: Callable[..., Any], args: dict[str, Any]) -> Any:
        try:
            res = fn(**args)
            if asyncio.iscoroutine(res):
                res = await res
            return res
        except ApiError:
            raise
        except TypeError as e:
            raise ApiError("bad_request", f"bad arguments: {e}") from None
        except cfgmod.ConfigError as e:
            raise ApiError("invalid", str(e), field=e.field) from None
        except reconcile.ReconcileError as e:
            raise ApiError(e.code, f"{e.field}: {e.message}", hint=e.hint, field=e.field) from None
        except Exception as e:
            log.exception("control op failed")
            raise ApiError("internal", f"internal error: {e!r}") from None

    # ------------------------------------------------------------------ helpers

    def _cfg(self) -> dict[str, Any]:
        return self.reconciler.current()

    async def _mutate(
        self,
        edit: Callable[[dict[str, Any]], Any],
        *,
        dry_run: bool = False,
        force: bool = True,
    ) -> dict[str, Any]:
        """Edit a copy of the applied config, apply it all or nothing, save what is in force.

        ``force=False`` has reconcile refuse (code ``busy``) a change that would drop
        sessions or connections; an op that checks its own object first (``target delete``)
        keeps the default. On any failure the daemon and the saved file stay as they were.
        """
        async with self.reconciler.lock:
            return await self._mutate_locked(edit, dry_run=dry_run, force=force)

    async def _mutate_locked(
        self,
        edit: Callable[[dict[str, Any]], Any],
        *,
        dry_run: bool = False,
        force: bool = True,
    ) -> dict[str, Any]:
        """:meth:`_mutate` for a caller that holds the reconciler's lock (``lun create``
        holds it from its checks to the save)."""
        link = self.reconciler.group_link
        # A hand-written group (no definition on the volume): changes stay in the local
        # config, as outside a group; its LUNs become group LUNs as they open (_attach_lu).
        if link is not None and not (link.definition is None and link.no_definition_said):
            return await self._mutate_group(edit, dry_run=dry_run, force=force)
        before = self.reconciler.current()
        cfg = self.reconciler.current()
        result = edit(cfg)
        if asyncio.iscoroutine(result):
            result = await result
        cfg = cfgmod.validate(cfg, stat_files=False)  # the reconciler checks files off the loop
        try:
            changes = await self.reconciler.apply_locked(cfg, dry_run=dry_run, force=force)
        except reconcile.BusyError as e:
            kind = e.field.split()[0] if " " in e.field else None
            raise ApiError("busy", e.message, kind=kind, hint=e.hint, field=e.field) from None
        if not dry_run:
            try:
                self._save_if_changed(before)
            except Exception as e:
                # A change is in force only if it was saved: the next start or reload would
                # otherwise lose it (or keep a LUN whose file a failed create removed).
                await self._undo_unsaved(before, e)
            for w in exposure.newly_exposed(before, self.reconciler.current()):
                log.warning("%s", w)
        return {"result": result, "changes": changes}

    async def _undo_unsaved(self, before: dict[str, Any], err: Exception) -> None:
        """Put ``before`` back in force after a change whose save failed; always raises.

        Forced: only what the change just did is undone, sessions it dropped stay dropped.
        Raises :class:`UnsavedChange` with ``undone`` saying whether the daemon runs
        ``before`` again (if not, running state and saved config differ, and say so)."""
        path = cfgmod.config_path(self.state_dir)
        what = f"could not save the config to {path}: {err}"
        log.error("%s; undoing the change that was applied", what)
        try:
            await self.reconciler.apply_locked(before, force=True)
        except Exception as e:
            log.error(
                "%s, and undoing the change failed too (%s): the running daemon and the saved"
                " config now DIFFER; fix the cause, then run 'gluster-iscsi config save' to keep"
                " what runs or 'gluster-iscsi config reload --force' to go back to the file",
                what, e, exc_info=True,
            )  # fmt: skip
            raise UnsavedChange(
                "internal", f"{what}; the change is in force but NOT saved, and undoing it"
                f" failed ({e}): the running daemon and the saved config differ",
                undone=False, hint="fix the cause, then 'gluster-iscsi config save' (keep what"
                " runs) or 'gluster-iscsi config reload --force' (go back to the saved file)",
            ) from None  # fmt: skip
        raise UnsavedChange(
            "unavailable", f"{what}; the change was undone", undone=True,
            hint=f"check the state directory {self.state_dir} (space, permissions), then retry",
        ) from None  # fmt: skip

    async def _mutate_group(
        self, edit: Callable[[dict[str, Any]], Any], *, dry_run: bool, force: bool
    ) -> dict[str, Any]:
        """:meth:`_mutate_locked` in a gateway group: the edit sees the composed config;
        what it changes of the targets, LUNs and CHAP accounts goes to the group definition
        (on the volume, under its lock, only if nobody changed it meanwhile), the rest
        (portals, params, discovery) to the local config. Applied here first, all or nothing;
        if the definition cannot be written, undone here too. The other gateways take the
        new version at their next poll."""
        from . import group as groupmod

        link = self.reconciler.group_link
        local_before = self.reconciler.local()
        try:
            defn = await self._in_executor(link.load)
            groupmod.check_version(defn)
        except groupmod.GroupError as e:
            raise ApiError(e.code, e.message, kind="group", hint=e.hint) from None
        except Exception as e:
            raise _volume_error(link.location, e) from None
        cfg = groupmod.compose(local_before, defn, link.access)
        result = edit(cfg)
        if asyncio.iscoroutine(result):
            result = await result
        cfg.setdefault("group", local_before.get("group"))  # a whole document (config apply)
        cfg = cfgmod.validate(cfg, stat_files=False)
        try:
            new_defn = await self._in_executor(
                lambda: groupmod.decompose(cfg, defn, local_before, link)
            )
        except groupmod.GroupError as e:
            raise ApiError(e.code, e.message, kind="group", hint=e.hint) from None
        except OSError as e:  # a LUN file not there (or not reachable) through the group
            raise ApiError(
                "unavailable", f"cannot record a LUN file in the group: {e.strerror or e}"
                f" ({getattr(e, 'filename', None) or e})", kind="backing",
                hint="check that the file exists on the group's volume (lun create makes it"
                " when given --size); the change was not made",
            ) from None  # fmt: skip
        new_local = groupmod.local_part(cfg, local_before, new_defn)
        old_defn = link.definition
        link.definition = new_defn
        try:
            changes = await self.reconciler.apply_locked(new_local, dry_run=dry_run, force=force)
        except reconcile.BusyError as e:
            link.definition = old_defn
            kind = e.field.split()[0] if " " in e.field else None
            raise ApiError("busy", e.message, kind=kind, hint=e.hint, field=e.field) from None
        except BaseException:
            link.definition = old_defn
            raise
        if dry_run:
            link.definition = old_defn
            return {"result": result, "changes": changes}
        written_version = None
        if groupmod.definition_changed(defn, new_defn):
            try:
                written = await self._in_executor(lambda: link.write(defn, new_defn))
            except Exception as e:
                link.definition = old_defn
                try:
                    await self.reconciler.apply_locked(local_before, force=True)
                except Exception:
                    log.exception("undoing a change whose group definition was not written")
                if isinstance(e, groupmod.GroupError):
                    raise ApiError(e.code, e.message, kind="group", hint=e.hint) from None
                raise _volume_error(link.location, e) from None
            link.definition = written
            link.applied_version = written_version = written.get("version")
        try:
            self._save_if_changed(local_before)
        except Exception as e:
            try:
                await self._undo_unsaved(local_before, e)
            except UnsavedChange as u:
                if written_version is None:
                    raise
                # Only this gateway's own part is undone: the definition on the volume is
                # every gateway's, and what it names (a file just made) stays in use.
                raise UnsavedChange(
                    u.code, f"{u.message}; this gateway's own part only: the group definition"
                    f" part (version {written_version}) is written and stays in force on every"
                    " gateway", undone=False, hint=u.hint,
                ) from None  # fmt: skip
        return {"result": result, "changes": changes}

    def _save_if_changed(self, before: dict[str, Any]) -> None:
        """Save the config in force if it differs from ``before`` (or no file exists yet)."""
        now = self.reconciler.local()
        if cfgmod.same_ignoring_epoch(now, before) and cfgmod.config_path(self.state_dir).exists():
            return
        now["epoch"] = before.get("epoch", 0) + 1
        cfgmod.save(self.state_dir, now)
        # keep the applied copy's epoch in step with the file
        self.reconciler.set_epoch(now["epoch"])

    def _target(self, cfg: dict[str, Any], ref: Any) -> dict[str, Any]:
        if ref is None or ref == "":
            raise ApiError("bad_request", "which target? give its name or tid", kind="target")
        t = cfgmod.find_target(cfg, ref)
        if t is None:
            raise ApiError(
                "not_found",
                f"target {ref} does not exist",
                kind="target",
                hint="'gluster-iscsi target list' shows the targets",
            )
        return t

    def _sessions(self, target_name: str | None = None) -> list[dict[str, Any]]:
        sessions = self.daemon.sessions()
        if target_name is not None:
            sessions = [
                s for s in sessions if str(s.get("target", "")).lower() == target_name.lower()
            ]
        return sessions

    async def _sizes(self, targets: list[dict[str, Any]]) -> dict[tuple[str, int], int | None]:
        """Current sizes of the open LUNs, measured off the event loop (a store's size may
        be a network call); a store that does not answer in time shows no size rather than
        hanging 'list'."""
        keys, futures = [], []
        loop = asyncio.get_running_loop()
        executor = self.daemon.store_executor
        for t in targets:
            for lu in t["luns"]:
                lu_obj = self.reconciler.logical_unit(t["name"], lu["lun"])
                if lu_obj is not None:
                    keys.append((t["name"].lower(), lu["lun"]))
                    futures.append(loop.run_in_executor(executor, _store_size, lu_obj))
        if not futures:
            return {}
        done, _ = await asyncio.wait(futures, timeout=SIZE_TIMEOUT)
        return {k: f.result() if f in done else None for k, f in zip(keys, futures, strict=True)}

    def _lun_view(
        self, t: dict[str, Any], lu: dict[str, Any], sizes: dict[tuple[str, int], int | None]
    ) -> dict[str, Any]:
        out = dict(lu)
        lu_obj = self.reconciler.logical_unit(t["name"], lu["lun"])
        out["online"] = lu_obj is not None
        if lu_obj is not None:
            measured = sizes.get((t["name"].lower(), lu["lun"]))
            if measured is not None:
                out["size"] = measured
            # What READ CAPACITY(16) reports as LBPME and INQUIRY as UNMAP support.
            out["thin_provisioning"] = bool(lu_obj.store.capabilities.discard)
            # The gfapi read cache (backstore/cache.py): size, hits, and whether it is
            # coherent with other Gluster clients (upcalls) or single-writer only.
            cache_status = getattr(lu_obj.store, "cache_status", None)
            if cache_status is not None:
                out["cache"] = cache_status()
            # Writes acknowledged before they reach the store (server/runner.py): on or
            # not (and why), the window, what is pending now.
            out["write_behind"] = self.daemon.write_behind_status(lu_obj)
            naa = lu_obj.naa
            if isinstance(naa, bytes | bytearray):
                out["naa"] = naa.hex()
        return out

    async def _target_view(
        self, cfg: dict[str, Any], t: dict[str, Any], secrets: bool
    ) -> dict[str, Any]:
        sessions = self._sessions(t["name"])
        sizes = await self._sizes([t])
        view = {
            "name": t["name"],
            "tid": t["tid"],
            "alias": t["alias"],
            "luns": [self._lun_view(t, lu, sizes) for lu in t["luns"]],
            "acl": t["acl"],
            "incoming": t["incoming"],
            "outgoing": t["outgoing"],
            "params": t["params"],
            "effective_params": {**self.daemon.params, **t["params"]},
            "sessions": sessions,
        }
        if secrets:
            view["secrets"] = {u: cfg["accounts"][u] for u in reconcile._users(t)}
        return view

    # ------------------------------------------------------------------ ops: general

    def op_ping(self) -> dict[str, Any]:
        return {
            "api": API_VERSION,
            "version": _version(),
            "state_dir": str(self.state_dir),
            "pid": os.getpid(),
            "time": time.time(),
        }

    def op_ops(self) -> list[str]:
        return sorted(
            n[3:].replace("_", ".")
            for n in dir(self)
            if n.startswith("op_") and callable(getattr(self, n))  # not op_timeout
        )

    def op_sys_show(self) -> dict[str, Any]:
        cfg = self._cfg()
        return {
            **self.op_ping(),
            "targets": len(cfg["targets"]),
            "luns": sum(len(t["luns"]) for t in cfg["targets"]),
            "sessions": len(self._sessions()),
            "portals": [
                {"host": p.host, "port": p.port, "advertise": p.advertise}
                for p in self.daemon.portals()
            ],
            "params": dict(self.daemon.params),
            "epoch": cfg["epoch"],
            "io_uring": self._io_uring(),
            "gfapi_async": self._gfapi_async(),
            "scheduling": self.daemon.scheduling_status(),
            "memory": self._memory(),
            "connections": self._connections(),
            "group": self._group_summary(cfg),
            "read_cache": read_cache.summary(),
            # the memory target all read caches share (server/memory.py); None: none runs
            "cache_target": (self.daemon.memory_governor.status()
                             if self.daemon.memory_governor is not None else None),
            # serve --write-behind: each lone gfapi LUN's window, bytes (0: off)
            "write_behind": {"window": self.daemon.write_behind},
        }

    def _group_summary(self, cfg: dict[str, Any]) -> dict[str, Any] | None:
        """This gateway's group membership for ``status`` (None: a lone gateway)."""
        section = cfg.get("group")
        if not section:
            return None
        link = self.reconciler.group_link
        defn = link.definition if link is not None else None
        return {
            "name": (defn or {}).get("name"), "location": section["location"],
            "gateway": section["gateway"], "number": section["number"],
            "active": link is not None,
            "applied_version": link.applied_version if link is not None else None,
            "error": link.error if link is not None else None,
            **self._member_problems(),
        }  # fmt: skip

    def _member_problems(self) -> dict[str, Any]:
        """What the group member reports wrong (``status``): another daemon running as this
        gateway (``duplicate``), LUNs whose owner holds its lock without renewing."""
        try:
            st = self.daemon.group_status()
        except Exception:  # noqa: BLE001 - the status is extra
            return {}
        if not isinstance(st, dict):
            return {}
        return {"duplicate": st.get("duplicate"),
                "hung_owners": {k: v.get("owner") for k, v in (st.get("luns") or {}).items()
                                if isinstance(v, dict) and v.get("owner_hung")}}

    def _memory(self) -> dict[str, int]:
        """The budget for commands' data (``serve --memory-budget``) and how much is held."""
        b = self.daemon.budget
        return {"budget": b.limit, "session_share": b.share, "in_use": b.used, "peak": b.peak}

    def _connections(self) -> dict[str, int]:
        """Open connections and the caps (``serve --max-connections`` ...)."""
        lim = self.daemon.limits
        return {
            "open": len(self.daemon.connections),
            "max": lim.max_connections,
            "max_per_host": lim.max_connections_per_host,
            "max_prelogin": lim.max_prelogin,
            "max_prelogin_per_host": lim.max_prelogin_per_host,
        }

    def _io_uring(self) -> dict[str, Any]:
        """Whether lone reads and writes of FUSE-file LUNs go through io_uring, and how many."""
        calls = self.daemon.ring_calls
        return {
            "enabled": self.daemon.io_uring,
            "available": calls is not None,
            "calls": calls or 0,
        }

    def _gfapi_async(self) -> dict[str, Any]:
        """Whether gfapi LUNs' reads and writes are asynchronous libgfapi calls, and how many;
        the translator options the daemon's Gluster clients get (defaults included)."""
        from ..backstore.gfapi.store import client_xlator_option_texts
        from ..server.gfaio import supported

        calls = self.daemon.gfaio_calls
        return {
            "enabled": self.daemon.gfapi_async,
            "supported": supported(),  # the C module is built
            "in_use": calls is not None,
            "calls": calls or 0,
            "client_options": client_xlator_option_texts(),
        }

    # ------------------------------------------------------------------ the group

    def start_group(self) -> None:
        """In a gateway group (the applied config has a ``group`` section): link to the
        group directory and start the poll that applies each new definition version."""
        if self._group_task is not None:
            return
        section = self.reconciler.current().get("group")
        if not section:
            return
        from .group import GroupLink

        link = GroupLink(section)
        self.reconciler._local = self.reconciler.current()
        self.reconciler.group_link = link
        if self.group_member is not None:
            self.reconciler.set_hooks(self._attach_lu, self._detach_lu)
        self._group_task = asyncio.ensure_future(self._group_poll(link))

    async def _attach_lu(self, target_name: str, lun: int, lu: Any,
                         entry: dict[str, Any] | None = None) -> None:
        """A LU just opened on a group member (not serving yet) becomes a group LU of the
        member, so no store call is issued until this gateway owns it: the one function for
        every way a LUN arrives (start, SIGHUP, ``config reload``, the CLI; definition or
        hand-written group). A LUN of the group definition is keyed by the definition's
        GFID (the definition decides which LUNs are the group's); any other LUN of the
        config (a hand-written group: no definition) by its file's GFID, read through the
        group directory; a memory LUN is this process's own and is not attached.
        ``entry``: the LUN's config entry (its backing)."""
        from .group import member_key

        member = self.group_member
        if member is None:
            return
        found = self.reconciler.group_lun(target_name, lun)
        if found is not None:
            key, preferred = member_key(found[0]), found[1]
        else:
            if entry is None:
                return
            gfid = await self._file_gfid(member, entry)
            if gfid is None:
                return
            key, preferred = member_key(gfid), entry.get("preferred")
        old = member.luns.get(key)
        if old is not None and old.lu is not lu:
            # A replaced LU: the old one is still in the device and serving (and a change
            # that fails keeps it). It stays a group LU under a side key, its lease renewed
            # and its commands checked, until it has left the device and closed (reconcile
            # detaches it after the close); only then is its lock given back and the new
            # LU takes the lease. Detached now, it would serve as a lone LU, unchecked.
            side = f"{key}#replaced-{id(old.lu)}"
            member.luns[side] = member.luns.pop(key)
            self._replacing[id(lu)] = (key, side)
        member.attach(lu, key, preferred)

    async def _file_gfid(self, member: Any, entry: dict[str, Any]) -> str | None:
        """The GFID of a config entry's file, through the member's group directory (off the
        loop); None for a memory LUN."""
        from .config import _classify

        kind = _classify(entry["backing"], entry.get("bstype"))
        if kind is None or kind[0] == "memory":
            return None
        path = kind[1] if kind[0] == "file" else kind[1].path
        gfid: str = await self._in_executor(functools.partial(member.shared.gfid, path))
        return gfid

    async def attach_opened_luns(self) -> None:
        """Attach every LUN open now (the ones applied before the member existed, at start)
        through :meth:`_attach_lu`."""
        entries = {(t["name"].lower(), e["lun"]): e
                   for t in self.reconciler.current().get("targets", []) for e in t["luns"]}
        for tname, n, lu in self.reconciler.logical_units():
            await self._attach_lu(tname, n, lu, entries.get((tname.lower(), n)))

    def _detach_lu(self, lu: Any) -> None:
        """Reconcile detaches a group LU once it has left the device and closed (removed,
        replaced), or a new LU of a change that was rolled back: then the LU it was to
        replace, still serving, takes its own key back, attached all along."""
        member = self.group_member
        if member is None:
            return
        member.detach(lu)
        pending = self._replacing.pop(id(lu), None)
        if pending is not None:
            key, side = pending
            old = member.luns.pop(side, None)
            if old is not None and key not in member.luns:
                member.luns[key] = old
        for new_id, (_key, side) in list(self._replacing.items()):
            if side.endswith(f"#replaced-{id(lu)}"):  # the replaced LU closed: in force
                del self._replacing[new_id]

    async def stop_group(self) -> None:
        task, self._group_task = self._group_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        link = self.reconciler.group_link
        if link is not None:
            with contextlib.suppress(Exception):
                await self._in_executor(link.close)

    async def _group_poll(self, link: Any) -> None:
        """Every beat: read the definition (one record); a new version is applied through
        ``reconcile`` all or nothing; one that fails leaves the daemon as it was, is logged
        once and retried, after one beat, then two, four, ... at most :data:`RETRY_MAX`
        seconds apart (each try opens the version's new stores: a gfapi one mounts the
        volume), and at once when a newer version appears."""
        failing: str | None = None
        retry_in, retry_at = 0.0, 0.0
        while True:
            try:
                await self.refresh_group(link, retry_failed=self.clock() >= retry_at)
                failing, retry_in = None, 0.0
            except asyncio.CancelledError:
                raise
            except _NotRetried:
                pass  # still failing: said already
            except Exception as e:
                retry_in = min(max(2 * retry_in, link.beat_seconds), RETRY_MAX)
                retry_at = self.clock() + retry_in
                text = str(e) or repr(e)
                link.error = text
                if text != failing:
                    log.error("group %s: cannot take the group definition in: %s",
                              link.location, text)
                failing = text
            await asyncio.sleep(link.beat_seconds)

    async def refresh_group(self, link: Any = None, retry_failed: bool = True) -> bool:
        """One poll: read the definition; a version not yet in force (or one that failed
        before, unless ``retry_failed`` is false) is applied all or nothing. True if it is
        in force now; raises why not."""
        from .group import GroupError

        link = link or self._link()
        try:
            defn = await self._in_executor(link.load)
        except GroupError as e:
            if e.code != "not_found":
                raise
            # A group written by hand in each gateway's config (no definition on the
            # volume): this gateway serves its own LUNs as group LUNs (serve attaches them).
            if not link.no_definition_said:
                log.info("group %s: no group definition there; the LUNs of this gateway's"
                         " own config are its group LUNs", link.location)
                link.no_definition_said = True
            return False
        if defn.get("version") != link.applied_version or link.error is not None:
            if not retry_failed and self._failed_version is not None \
                    and defn.get("version") == self._failed_version:
                raise _NotRetried(link.error)
            async with self.reconciler.lock:
                await self._take_definition(link, defn)
        return True

    async def _take_definition(self, link: Any, defn: dict[str, Any]) -> None:
        old, old_version = link.definition, link.applied_version
        link.definition = defn
        try:
            changes = await self.reconciler.apply_locked(self.reconciler.local(), force=True)
        except BaseException as e:
            link.definition = old
            link.error = f"definition version {defn.get('version')} not applied: {e}"
            link.error_version = self._failed_version = defn.get("version")
            raise RuntimeError(link.error) from None
        link.applied_version = defn.get("version")
        link.error = None
        self._failed_version = None
        if changes or old_version is None:
            log.info("group %s: definition version %s in force (%d change(s))",
                     link.location, defn.get("version"), len(changes))

    def _link(self) -> Any:
        link = self.reconciler.group_link
        if link is None:
            section = self.reconciler.current().get("group")
            raise ApiError(
                "not_found",
                "this gateway is in no group" if not section else "this gateway joined group"
                f" at {section.get('location')} but has not been restarted since",
                kind="group",
                hint="'gluster-iscsi group join LOCATION --gateway NAME'" if not section
                else "restart the daemon (systemctl restart gluster-iscsi)",
            )  # fmt: skip
        return link

    async def _group_call(self, fn: Callable[[], Any]) -> Any:
        from . import group as groupmod

        try:
            return await self._in_executor(fn)
        except groupmod.GroupError as e:
            raise ApiError(e.code, e.message, kind="group", hint=e.hint) from None

    async def op_group_join(
        self, location: str, gateway: str, number: int | None = None,
        addresses: list[str] | None = None,
    ) -> dict[str, Any]:
        """Record this gateway in the group at ``location`` and save the ``group`` section
        in its config; in force once the daemon restarts (``restart_required``)."""
        from . import group as groupmod

        async with self.reconciler.lock:
            local = self.reconciler.local()
            joined, defn = await self._group_call(lambda: groupmod.join_group(
                local, location, gateway, number, list(addresses or [])))  # fmt: skip
            section = joined["group"]

            def edit(cfg: dict[str, Any]) -> None:
                cfg["group"] = section

            await self._mutate_locked(edit)
        link = self.reconciler.group_link
        restart = link is None or link.location != location or link.gateway != gateway
        return {
            "group": defn.get("name"), "location": location, "gateway": gateway,
            "number": section["number"], "addresses": defn["gateways"][gateway]["addresses"],
            "restart_required": restart,
            "hint": groupmod.RESTART_HINT.format(state_dir=self.state_dir) if restart else None,
        }  # fmt: skip

    async def op_group_leave(self, force: bool = False) -> dict[str, Any]:
        """Take this gateway out of its group: the group's targets stop here at once (their
        sessions close: ``force`` needed if any), its config keeps no ``group`` section."""
        from . import group as groupmod

        section = self.reconciler.local().get("group")
        if not section:
            raise ApiError("not_found", "this gateway is in no group", kind="group")
        if not force and self._sessions():
            raise ApiError("busy", f"{len(self._sessions())} session(s) are logged in to the"
                           " group's targets here", kind="group",
                           hint="log them out first, or use --force to close them")
        link = self.reconciler.group_link
        await self.stop_group()
        try:
            async with self.reconciler.lock:
                local = self.reconciler.local()
                left, defn = await self._group_call(lambda: groupmod.leave_group(local))
                self.reconciler.group_link = None
                before = self.reconciler.local()
                try:
                    await self.reconciler.apply_locked(left, force=True)
                    self._save_if_changed(before)
                except BaseException:
                    self.reconciler.group_link = link
                    raise
        except BaseException:
            # Still in the group (the volume refused the leave, or it could not be applied
            # here): the definition poll goes on, else no later version is taken in.
            if link is not None and self.reconciler.group_link is link \
                    and self._group_task is None:
                self._group_task = asyncio.ensure_future(self._group_poll(link))
            raise
        return {"group": (defn or {}).get("name"), "location": section["location"],
                "gateway": section["gateway"], "restart_required": True,
                "hint": groupmod.RESTART_HINT.format(state_dir=self.state_dir)}

    async def op_group_show(self) -> dict[str, Any]:
        """The group: each gateway (number, addresses, last beat, state) and each LUN
        (owner, epoch, preferred gateway, sessions here)."""
        from . import group as groupmod

        link = self._link()
        defn = await self._group_call(link.load)
        status = await self._group_status()
        gstat = status.get("gateways") or {}
        lstat = status.get("luns") or {}
        gateways = []
        for name, g in groupmod.gateways_by_number(defn):
            st = gstat.get(name) or {}
            live = st.get("live")
            gateways.append({
                "name": name, "number": g.get("number"), "addresses": g.get("addresses") or [],
                "joined_at": g.get("joined_at"), "this": name == link.gateway,
                "beat_age": st.get("age"), "version": st.get("version"),
                "state": "unknown" if live is None else ("up" if live else "down"),
            })  # fmt: skip
        luns = []
        sessions = self._sessions()
        for gfid, e in sorted((defn.get("luns") or {}).items(),
                              key=lambda kv: (str(kv[1].get("target")), kv[1].get("lun", 0))):
            st = lstat.get(groupmod.member_key(gfid)) or lstat.get(gfid) or {}
            here = sum(1 for s in sessions
                       if str(s.get("target", "")).lower() == str(e.get("target")).lower())
            luns.append({
                "gfid": gfid, "target": e.get("target"), "lun": e.get("lun"),
                "path": e.get("path"), "preferred": e.get("preferred"),
                "owner": st.get("owner"), "epoch": st.get("epoch"), "role": st.get("role"),
                "sessions": {link.gateway: here, **(st.get("sessions") or {})},
                # the owner holds the lock without renewing (hung: only a kill frees it)
                "owner_hung": bool(st.get("owner_hung")),
                "owner_silent_for": st.get("owner_silent_for"),
            })  # fmt: skip
        return {
            "name": defn.get("name"), "version": defn.get("version"),
            "location": link.location, "gateway": link.gateway,
            "access": link.access.kind, "settings": defn.get("settings") or {},
            "applied_version": link.applied_version, "error": link.error,
            "gateways": gateways, "luns": luns,
            # another daemon runs as this gateway (name or number): who, and who stands down
            "duplicate": status.get("duplicate"),
        }  # fmt: skip

    async def _group_status(self) -> dict[str, Any]:
        """What the runtime's group member knows (owners, epochs, beats); {} without one."""
        try:
            res = self.daemon.group_status()
            if asyncio.iscoroutine(res):
                res = await res
        except Exception as e:  # the status is extra: the definition still shows
            log.warning("group status: %s", e)
            return {}
        return _keyed(res)

    def op_group_initiator_config(self) -> dict[str, Any]:
        """The initiator side: a multipath.conf device section, iscsiadm lines."""
        from . import group as groupmod

        link = self._link()
        defn = link.definition
        if defn is None:
            raise ApiError("unavailable", "the group definition has not been read yet",
                           kind="group", hint="try again in a moment")
        return groupmod.initiator_config(defn)

    async def op_lun_move(self, target: TargetRef, lun: int, to: str) -> dict[str, Any]:
        """A planned move of a group LUN's ownership to gateway ``to``."""
        link = self._link()
        t = self._target(self._cfg(), target)
        found = self.reconciler.group_lun(t["name"], lun)
        if found is None:
            raise ApiError("not_found", f"target {t['name']} has no group LUN {lun}",
                           kind="lun", hint=f"'gluster-iscsi lun list {t['name']}'")
        gws = (link.definition or {}).get("gateways") or {}
        if to not in gws:
            raise ApiError("not_found", f"no gateway {to} in the group", kind="gateway",
                           hint="known: " + ", ".join(sorted(gws)))
        moved = await self._move(found[0], to)
        return {"target": t["name"], "lun": lun, "gfid": found[0], "to": to, **moved}

    async def _move(self, gfid: str, to: str) -> dict[str, Any]:
        from .group import member_key

        try:
            res = self.daemon.group_move(member_key(gfid), to)
            if asyncio.iscoroutine(res):
                res = await res
        except ApiError:
            raise
        except KeyError as e:
            raise ApiError("not_found", f"cannot move: {e}", kind="lun") from None
        except (TimeoutError, OSError, RuntimeError, ValueError) as e:
            raise ApiError("unavailable", f"the move to {to} did not complete: {e}",
                           kind="lun", hint="'gluster-iscsi group show' says who owns it") from None
        return res if isinstance(res, dict) else {}

    async def op_group_rebalance(self, dry_run: bool = False) -> dict[str, Any]:
        """Move every LUN to its preferred gateway (round robin by number when that gateway
        left); LUNs already there stay. Every move is tried: one that fails is a row with
        ``error`` (``failed`` counts them), the others go on."""
        from . import group as groupmod

        link = self._link()
        defn = await self._group_call(link.load)
        status = await self._group_status()
        owners = {g: (s or {}).get("owner") for g, s in (status.get("luns") or {}).items()}
        plan = groupmod.rebalance_plan(defn)
        moves = []
        for gfid, to in plan.items():
            e = defn["luns"][gfid]
            owner = owners.get(groupmod.member_key(gfid), owners.get(gfid))
            if owner == to:
                continue
            row = {"gfid": gfid, "target": e.get("target"), "lun": e.get("lun"),
                   "from": owner, "to": to, "done": False}
            if not dry_run:
                try:
                    await self._move(gfid, to)
                    row["done"] = True  # asked of the owner (the move is asynchronous)
                except ApiError as exc:
                    row["error"] = exc.message
            moves.append(row)
        failed = sum(1 for m in moves if "error" in m)
        return {"moves": moves, "dry_run": dry_run, "failed": failed}

    # ------------------------------------------------------------------ ops: targets

    async def op_target_list(self) -> list[dict[str, Any]]:
        cfg = self._cfg()
        sizes = await self._sizes(cfg["targets"])
        return [
            {
                "name": t["name"],
                "tid": t["tid"],
                "alias": t["alias"],
                "luns": len(t["luns"]),
                "size": sum(
                    lu["size"] or 0 for lu in (self._lun_view(t, x, sizes) for x in t["luns"])
                ),
                "acl": [r.get("initiator") or r["network"] for r in t["acl"]],
                "chap": bool(t["incoming"]) or any(r.get("incoming") for r in t["acl"]),
                "sessions": len(self._sessions(t["name"])),
            }
            for t in cfg["targets"]
        ]

    async def op_target_show(self, target: TargetRef, show_secrets: bool = False) -> dict[str, Any]:
        cfg = self._cfg()
        return await self._target_view(cfg, self._target(cfg, target), show_secrets)

    async def op_target_create(
        self,
        name: str,
        tid: int | None = None,
        alias: str | None = None,
        force: bool = False,
        lenient: bool = False,
    ) -> dict[str, Any]:
        """``lenient``: tgt's rule (any name; warnings say what is wrong with it)."""
        try:
            warnings = validate_name(name, force=force or lenient)
        except InvalidName as e:
            raise ApiError(
                "invalid",
                str(e),
                kind="name",
                hint="fix the name (iqn.YYYY-MM.reversed.domain:id), or pass --force to keep it",
            ) from None

        def edit(cfg: dict[str, Any]) -> dict[str, Any]:
            if cfgmod.find_target(cfg, name) is not None and not name.isdigit():
                raise ApiError(
                    "exists", f"target {name} already exists", kind="target",
                    hint="delete it first, or pick another name",
                )  # fmt: skip
            if tid is not None:
                if isinstance(tid, bool) or not isinstance(tid, int) or tid < 1:
                    raise ApiError("invalid", f"tid {tid!r} must be a number >= 1", kind="tid")
                if any(t["tid"] == tid for t in cfg["targets"]):
                    raise ApiError(
                        "exists", f"tid {tid} is already used", kind="target",
                        hint="pick another --tid or leave it out to get the next free one",
                    )  # fmt: skip
            new = {
                "name": name,
                "tid": tid if tid is not None else cfgmod.next_tid(cfg),
                "alias": alias,
                "luns": [],
                "acl": [],
                "incoming": [],
                "outgoing": None,
                "params": {},
            }
            if warnings:
                new["forced"] = True
            cfg["targets"].append(new)
            return {"name": name, "tid": new["tid"]}

        out = await self._mutate(edit)
        for w in warnings:
            log.warning("target name %s", w)
        return {**out["result"], "warnings": warnings, "changes": out["changes"]}

    async def op_target_delete(self, target: TargetRef, force: bool = False) -> dict[str, Any]:
        cfg = self._cfg()
        t = self._target(cfg, target)
        sessions = self._sessions(t["name"])
        if sessions and not force:
            raise ApiError(
                "busy",
                f"target {t['name']} has {len(sessions)} session(s) logged in",
                kind="target",
                hint="log them out first, or use --force to close them",
            )

        def edit(cfg: dict[str, Any]) -> dict[str, Any]:
            cfg["targets"] = [x for x in cfg["targets"] if x["name"] != t["name"]]
            return {"name": t["name"], "tid": t["tid"]}

        out = await self._mutate(edit)
        return {**out["result"], "changes": out["changes"]}

    async def op_target_update(
        self, target: TargetRef, alias: str | None = None, clear_alias: bool = False
    ) -> dict[str, Any]:
        def edit(cfg: dict[str, Any]) -> None:
            t = self._target(cfg, target)
            if alias is not None or clear_alias:
                t["alias"] = None if clear_alias else alias

        return await self._mutate(edit)

    # ------------------------------------------------------------------ ops: LUNs

    async def op_lun_list(self, target: TargetRef | None = None) -> list[dict[str, Any]]:
        cfg = self._cfg()
        targets = [self._target(cfg, target)] if target is not None else cfg["targets"]
        sizes = await self._sizes(targets)
        return [
            {"target": t["name"], "tid": t["tid"], **self._lun_view(t, lu, sizes)}
            for t in targets
            for lu in t["luns"]
        ]

    def op_lun_stats(self, target: TargetRef | None = None, lun: int | None = None) -> list[dict[str, Any]]:
        """Counters of every LUN, of TARGET's, or of one LUN (``lun stats``)."""
        rows = self.daemon.lun_stats()
        if target is not None:
            t = self._target(self._cfg(), target)
            rows = [r for r in rows if r["target"] == t["name"]]
            if lun is not None:
                if not any(lu["lun"] == lun for lu in t["luns"]):
                    raise ApiError("not_found", f"target {t['name']} has no LUN {lun}", kind="lun",
                                   hint=f"'gluster-iscsi lun list {t['name']}' shows its LUNs")
                rows = [r for r in rows if r["lun"] == lun]
        return rows

    async def op_lun_create(
        self,
        target: TargetRef,
        backing: str,
        lun: int | None = None,
        bstype: str | None = None,
        size: Size | None = None,
        create: bool = False,
        prealloc: str = "sparse",
        read_only: bool = False,
        block_size: int = 512,
        uuid: str | None = None,
        serial: str | None = None,
        overwrite: bool = False,
    ) -> dict[str, Any]:
        """Check everything, then provision the file (``create``), then change state.

        ``create`` with ``size`` makes the backing file. An existing file with data is
        never written over unless ``overwrite`` says its contents may go; a file this call
        made is removed again if the call fails."""
        from ..backstore.provision import Preallocation

        nbytes = _size(size) if size is not None else None
        if create and nbytes is None:
            raise ApiError("bad_request", "--create needs --size", kind="lun")
        if prealloc not in tuple(Preallocation):
            raise ApiError(
                "invalid", f"unknown preallocation {prealloc!r}", kind="lun",
                hint="one of " + ", ".join(Preallocation),
            )  # fmt: skip
        if nbytes is not None and block_size in cfgmod.BLOCK_SIZES:
            cfgmod.check_lun_size(nbytes, block_size, "size")
        # What the entry will say (tgt's vol@host:path is glfs): every look at the file
        # below must take it for the same thing the LUN will open.
        kind_of = bstype or cfgmod.guess_bstype(backing)

        def edit(cfg: dict[str, Any]) -> dict[str, Any]:
            t = self._target(cfg, target)
            used = {x["lun"] for x in t["luns"]}
            n = (
                lun
                if lun is not None
                else next(i for i in range(1, cfgmod.MAX_LUN + 2) if i not in used)
            )
            if n in used:
                raise ApiError(
                    "exists", f"target {t['name']} already has LUN {n}", kind="lun",
                    hint="pick another --lun, or delete that one first",
                )  # fmt: skip
            other = cfgmod.exported_as(cfg, backing, kind_of, stat_files=False)
            if other is not None:
                raise ApiError(
                    "exists", f"{backing} is already exported as LUN {other[1]} of {other[0]}",
                    kind="backing", hint="one backing file is one LUN: use that LUN, or delete it"
                    " first",
                )  # fmt: skip
            entry = cfgmod.new_lun(
                n, backing, bstype, size=nbytes, read_only=read_only, block_size=block_size,
                uuid=uuid, serial=serial,
            )  # fmt: skip
            t["luns"].append(entry)
            return {"target": t["name"], "tid": t["tid"], "lun": n}

        # One change at a time from the first check to the save: a concurrent create of the
        # same file waits, then finds it exported, rather than removing the file this one
        # exported (or provisioning over it).
        async with self.reconciler.lock:
            # Everything the config can say, checked on a copy before the file is touched.
            trial = self._cfg()
            made = edit(trial)
            trial = cfgmod.validate(trial, stat_files=False)
            try:  # hard links and bind mounts too: stat calls, off the loop
                await reconcile.check_exports(self.daemon, trial)
            except cfgmod.ConfigError as e:
                raise ApiError(
                    "exists", f"{backing} is already exported: {e.message}", kind="backing",
                    hint="one backing file is one LUN: use that LUN, or delete it first",
                ) from None
            created, existing = False, None
            if create:
                assert nbytes is not None
                existing = await self._check_overwrite(backing, kind_of, overwrite)
                created = await self._provision(backing, kind_of, nbytes, prealloc, overwrite)
            try:
                if self.reconciler.group_link is None:
                    # A file on a Gluster volume: the identity recorded there (decision 5),
                    # whatever spelling or mount path names the file here.
                    ident = await self._lone_identity(trial, made)
                    if ident is not None:
                        uuid, serial = ident["uuid"], ident["serial"]
                        block_size = ident["block_size"]
                out = await self._mutate_locked(edit)
            except UnsavedChange as e:
                # Applied, then undone because the save failed: the file is unused again,
                # unless the undo failed, and then a running LUN may use it: keep it.
                if e.undone and (created or existing == 0):
                    await self._unprovision(backing, kind_of, created)
                raise
            except BaseException:
                if created or existing == 0:  # what was made, or an empty file that was grown
                    await self._unprovision(backing, kind_of, created)
                raise
        return {**out["result"], "changes": out["changes"]}

    async def _lone_identity(
        self, cfg: dict[str, Any], made: dict[str, Any]
    ) -> dict[str, Any] | None:
        from . import group as groupmod

        t = cfgmod.find_target(cfg, made["target"])
        assert t is not None
        entry = next(x for x in t["luns"] if x["lun"] == made["lun"])
        try:
            return await self._in_executor(lambda: groupmod.lone_identity(entry))  # type: ignore[no-any-return]
        except groupmod.GroupError as e:
            raise ApiError(e.code, e.message, kind="lun", hint=e.hint) from None

    async def _in_executor(self, fn: Callable[[], Any]) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.daemon.store_executor, fn)

    async def _check_overwrite(
        self, backing: str, bstype: str | None, overwrite: bool
    ) -> int | None:
        """The size of the existing file (None: there is none); refuses one with data."""
        from ..backstore.provision import probe_backing

        try:
            existing = await self._in_executor(lambda: probe_backing(backing, bstype))
        except OSError as e:
            raise ApiError(
                "unavailable", f"cannot look at {backing}: {e}", kind="lun",
                hint="check the path/volume is reachable",
            ) from None  # fmt: skip
        except ValueError as e:
            raise ApiError("invalid", f"{backing}: {e}", kind="lun") from None
        if existing and not overwrite:
            raise ApiError(
                "exists", f"{backing} already exists and holds {existing} bytes; --size would"
                " provision over it", kind="lun",
                hint="omit --size to export it as it is (grow it later with 'lun resize'), or"
                " pass --overwrite to throw its contents away",
            )  # fmt: skip
        return existing

    async def _provision(
        self, backing: str, bstype: str | None, nbytes: int, prealloc: str, overwrite: bool
    ) -> bool:
        from ..backstore.provision import create_backing

        try:
            return bool(
                await self._in_executor(
                    lambda: create_backing(
                        backing,
                        nbytes,
                        preallocation=prealloc,
                        exist_ok=True,
                        overwrite=overwrite,
                        bstype=bstype,
                    )  # fmt: skip
                )
            )
        except OSError as e:
            raise ApiError(
                "unavailable", f"cannot create {backing}: {e}", kind="lun",
                hint="check the directory/volume exists and has space",
            ) from None  # fmt: skip
        except ValueError as e:
            raise ApiError("invalid", f"cannot create {backing}: {e}", kind="lun") from None

    async def _unprovision(self, backing: str, bstype: str | None, created: bool) -> None:
        from ..backstore.provision import remove_backing, truncate_backing

        try:
            if created:
                await self._in_executor(lambda: remove_backing(backing, bstype))
            else:
                await self._in_executor(lambda: truncate_backing(backing, 0, bstype))
        except Exception:
            log.exception("could not remove %s after a failed lun create", backing)

    async def op_lun_delete(self, target: TargetRef, lun: int) -> dict[str, Any]:
        def edit(cfg: dict[str, Any]) -> dict[str, Any]:
            t = self._target(cfg, target)
            if not any(x["lun"] == lun for x in t["luns"]):
                raise ApiError(
                    "not_found", f"target {t['name']} has no LUN {lun}", kind="lun",
                    hint=f"'gluster-iscsi lun list {t['name']}' shows its LUNs",
                )  # fmt: skip
            t["luns"] = [x for x in t["luns"] if x["lun"] != lun]
            return {"target": t["name"], "lun": lun}

        out = await self._mutate(edit)
        return {**out["result"], "changes": out["changes"]}

    async def op_lun_resize(self, target: TargetRef, lun: int, size: Size) -> dict[str, Any]:
        nbytes = _size(size)
        t0 = self._target(self._cfg(), target)
        measured = (await self._sizes([t0])).get((t0["name"].lower(), lun))

        def edit(cfg: dict[str, Any]) -> dict[str, Any]:
            t = self._target(cfg, target)
            entry = next((x for x in t["luns"] if x["lun"] == lun), None)
            if entry is None:
                raise ApiError("not_found", f"target {t['name']} has no LUN {lun}", kind="lun")
            current = measured if measured is not None else (entry["size"] or 0)
            if nbytes < current:
                raise ApiError(
                    "invalid", f"LUN {lun} of {t['name']} is {current} bytes; cannot shrink"
                    f" to {nbytes}", kind="lun", hint="give a size larger than the current one",
                )  # fmt: skip
            entry["size"] = nbytes
            return {"target": t["name"], "lun": lun, "size": nbytes}

        out = await self._mutate(edit)
        return {**out["result"], "changes": out["changes"]}

    # ------------------------------------------------------------------ ops: ACLs

    def op_acl_list(self, target: TargetRef) -> list[dict[str, Any]]:
        cfg = self._cfg()
        return self._target(cfg, target)["acl"]

    async def op_acl_add(
        self,
        target: TargetRef,
        initiator: str | None = None,
        network: str | None = None,
        force: bool = False,
    ) -> dict[str, Any]:
        rule = _rule(initiator, network, force)

        def edit(cfg: dict[str, Any]) -> dict[str, Any]:
            t = self._target(cfg, target)
            if any(_rule_key(r) == _rule_key(rule) for r in t["acl"]):
                raise ApiError(
                    "exists", f"target {t['name']} already allows {_rule_key(rule)}", kind="acl"
                )
            t["acl"].append(rule)
            return {"target": t["name"], "rule": rule}

        out = await self._mutate(edit)
        return {**out["result"], "changes": out["changes"]}

    async def op_acl_remove(
        self, target: TargetRef, initiator: str | None = None, network: str | None = None
    ) -> dict[str, Any]:
        key = (initiator or network or "").lower()
        if key == "all":
            key = "ALL".lower()

        def edit(cfg: dict[str, Any]) -> dict[str, Any]:
            t = self._target(cfg, target)
            if not any(_rule_key(r).lower() == key for r in t["acl"]):
                raise ApiError(
                    "not_found", f"target {t['name']} has no ACL rule {initiator or network}",
                    kind="acl", hint=f"'gluster-iscsi acl list {t['name']}' shows its rules",
                )  # fmt: skip
            t["acl"] = [r for r in t["acl"] if _rule_key(r).lower() != key]
            return {"target": t["name"]}

        out = await self._mutate(edit)
        return {**out["result"], "changes": out["changes"]}

    # ------------------------------------------------------------------ ops: CHAP

    def op_auth_account_list(self, show_secrets: bool = False) -> list[dict[str, Any]]:
        cfg = self._cfg()
        out = []
        for user, secret in cfg["accounts"].items():
            used = [t["name"] for t in cfg["targets"] if user in reconcile._users(t)]
            if user in cfg["discovery"]["incoming"] or user == cfg["discovery"]["outgoing"]:
                used.append("(discovery)")
            out.append(
                {
                    "user": user,
                    "secret": secret if show_secrets else cfgmod.REDACTED,
                    "used_by": used,
                }
            )
        return out

    async def op_auth_account_add(self, user: str, secret: str) -> dict[str, Any]:
        def edit(cfg: dict[str, Any]) -> dict[str, Any]:
            if user in cfg["accounts"]:
                raise ApiError(
                    "exists", f"CHAP account {user} already exists", kind="account",
                    hint="delete it first to change its secret",
                )  # fmt: skip
            cfgmod.check_user(user, f"account {user}")
            cfgmod.check_secret(secret, f"account {user}")
            cfg["accounts"][user] = secret
            return {"user": user}

        out = await self._mutate(edit)
        return {**out["result"], "changes": out["changes"]}

    async def op_auth_account_delete(self, user: str) -> dict[str, Any]:
        def edit(cfg: dict[str, Any]) -> dict[str, Any]:
            if user not in cfg["accounts"]:
                raise ApiError("not_found", f"no CHAP account {user}", kind="account")
            del cfg["accounts"][user]
            # As tgt: deleting an account unbinds it everywhere.
            for t in [*cfg["targets"], cfg["discovery"]]:
                _unbind(t, user)
            for t in cfg["targets"]:
                for r in t["acl"]:
                    _unbind(r, user)
                    if r.get("outgoing") and not r.get("incoming"):
                        r["outgoing"] = None
            return {"user": user}

        out = await self._mutate(edit)
        return {**out["result"], "changes": out["changes"]}

    async def op_auth_bind(
        self,
        user: str,
        target: TargetRef | None = None,
        discovery: bool = False,
        initiator: str | None = None,
        outgoing: bool = False,
    ) -> dict[str, Any]:
        def edit(cfg: dict[str, Any]) -> dict[str, Any]:
            if user not in cfg["accounts"]:
                raise ApiError(
                    "not_found", f"no CHAP account {user}", kind="account",
                    hint=f"create it first: gluster-iscsi auth account-create {user}",
                )  # fmt: skip
            holder, what = self._auth_holder(cfg, target, discovery, initiator)
            if outgoing:
                if holder.get("outgoing") == user:
                    raise ApiError("exists", f"{what} already answers as {user}", kind="account")
                if holder.get("outgoing"):
                    raise ApiError(
                        "exists", f"{what} already has an outgoing account {holder['outgoing']}",
                        kind="outgoing", hint="unbind it first",
                    )  # fmt: skip
                holder["outgoing"] = user
            else:
                holder.setdefault("incoming", [])
                if user in holder["incoming"]:
                    raise ApiError("exists", f"{what} already accepts {user}", kind="account")
                holder["incoming"].append(user)
                holder.setdefault("outgoing", None)
            return {"bound": what, "user": user, "outgoing": outgoing}

        out = await self._mutate(edit)
        return {**out["result"], "changes": out["changes"]}

    async def op_auth_unbind(
        self,
        user: str,
        target: TargetRef | None = None,
        discovery: bool = False,
        initiator: str | None = None,
        outgoing: bool = False,
    ) -> dict[str, Any]:
        def edit(cfg: dict[str, Any]) -> dict[str, Any]:
            holder, what = self._auth_holder(cfg, target, discovery, initiator)
            if outgoing:
                if holder.get("outgoing") != user:
                    raise ApiError("not_found", f"{what} does not answer as {user}", kind="account")
                holder["outgoing"] = None
            else:
                if user not in holder.get("incoming", []):
                    raise ApiError("not_found", f"{what} does not accept {user}", kind="account")
                holder["incoming"].remove(user)
            return {"unbound": what, "user": user}

        out = await self._mutate(edit)
        return {**out["result"], "changes": out["changes"]}

    def _auth_holder(
        self, cfg: dict[str, Any], target: Any, discovery: bool, initiator: str | None
    ) -> tuple[dict[str, Any], str]:
        if discovery:
            return cfg["discovery"], "discovery"
        t = self._target(cfg, target)
        if initiator is None:
            return t, f"target {t['name']}"
        rule = next(
            (r for r in t["acl"] if (r.get("initiator") or "").lower() == initiator.lower()), None
        )
        if rule is None:
            raise ApiError(
                "not_found", f"target {t['name']} has no ACL rule for initiator {initiator}",
                kind="acl", hint=f"add it first: gluster-iscsi acl add {t['name']} {initiator}",
            )  # fmt: skip
        return rule, f"initiator {initiator} of target {t['name']}"

    def op_auth_show(self, show_secrets: bool = False) -> dict[str, Any]:
        cfg = self._cfg()
        mask = (lambda u: u) if show_secrets else (lambda u: cfgmod.REDACTED)
        return {
            "accounts": {u: mask(s) if not show_secrets else s for u, s in cfg["accounts"].items()},
            "discovery": cfg["discovery"],
            "targets": [
                {
                    "name": t["name"],
                    "incoming": t["incoming"],
                    "outgoing": t["outgoing"],
                    "initiators": [
                        {
                            "initiator": r["initiator"],
                            "incoming": r["incoming"],
                            "outgoing": r["outgoing"],
                        }
                        for r in t["acl"]
                        if r.get("incoming")
                    ],
                }
                for t in cfg["targets"]
            ],
        }

    # ------------------------------------------------------------------ ops: portals

    def op_portal_list(self) -> list[dict[str, Any]]:
        cfg = self._cfg()
        live = {(p.host, p.port) for p in self.daemon.portals()}
        return [{**p, "listening": (p["host"], p["port"]) in live} for p in cfg["portals"]]

    async def op_portal_add(
        self, host: str, port: int = 3260, advertise: str | None = None
    ) -> dict[str, Any]:
        def edit(cfg: dict[str, Any]) -> dict[str, Any]:
            p = cfgmod.validate_portal(
                {"host": host, "port": port, "advertise": advertise}, "portal"
            )
            if any((x["host"], x["port"]) == (p["host"], p["port"]) for x in cfg["portals"]):
                raise ApiError("exists", f"portal {host}:{port} already exists", kind="portal")
            cfg["portals"].append(p)
            return p

        out = await self._mutate(edit)
        return {**out["result"], "changes": out["changes"]}

    async def op_portal_delete(self, host: str, port: int = 3260) -> dict[str, Any]:
        def edit(cfg: dict[str, Any]) -> dict[str, Any]:
            h = host.strip("[]")
            if not any((x["host"], x["port"]) == (h, port) for x in cfg["portals"]):
                raise ApiError("not_found", f"no portal {host}:{port}", kind="portal")
            cfg["portals"] = [x for x in cfg["portals"] if (x["host"], x["port"]) != (h, port)]
            return {"host": h, "port": port}

        out = await self._mutate(edit)
        return {**out["result"], "changes": out["changes"]}

    # ------------------------------------------------------------------ ops: sessions

    def op_session_list(self, target: TargetRef | None = None) -> list[dict[str, Any]]:
        if target is None:
            return self._sessions()
        t = self._target(self._cfg(), target)
        return self._sessions(t["name"])

    async def op_session_close(self, tsih: int) -> dict[str, Any]:
        closed = await self.daemon.close_session(int(tsih))
        if not closed:
            raise ApiError(
                "not_found", f"no session with TSIH {tsih}", kind="session",
                hint="'gluster-iscsi session list' shows the sessions",
            )  # fmt: skip
        return {"tsih": tsih, "closed": True}

    # ------------------------------------------------------------------ ops: params

    def op_param_list(self, target: TargetRef | None = None) -> dict[str, Any]:
        cfg = self._cfg()
        defaults = dict(self.daemon.params)
        if target is None:
            return {"params": defaults, "configured": cfg["params"]}
        t = self._target(cfg, target)
        return {"params": {**defaults, **t["params"]}, "configured": t["params"]}

    async def op_param_set(
        self, name: str, value: str | int, target: TargetRef | None = None
    ) -> dict[str, Any]:
        key, val = cfgmod.check_param(name, value, "param")

        def edit(cfg: dict[str, Any]) -> dict[str, Any]:
            holder = self._target(cfg, target)["params"] if target is not None else cfg["params"]
            holder[key] = val
            return {"name": key, "value": val}

        out = await self._mutate(edit)
        return {**out["result"], "changes": out["changes"]}

    async def op_param_unset(self, name: str, target: TargetRef | None = None) -> dict[str, Any]:
        key = name

        def edit(cfg: dict[str, Any]) -> dict[str, Any]:
            holder = self._target(cfg, target)["params"] if target is not None else cfg["params"]
            real = next((k for k in holder if k.lower() == key.lower()), None)
            if real is None:
                raise ApiError("not_found", f"parameter {name} is not set", kind="param")
            del holder[real]
            return {"name": real}

        out = await self._mutate(edit)
        return {**out["result"], "changes": out["changes"]}

    # ------------------------------------------------------------------ ops: config

    def op_config_export(self, show_secrets: bool = False) -> dict[str, Any]:
        cfg = self._cfg()
        return cfg if show_secrets else cfgmod.redact(cfg)

    async def op_config_apply(
        self, config: dict[str, Any], dry_run: bool = False, force: bool = False
    ) -> dict[str, Any]:
        """Make the daemon match ``config``, all or nothing; refuse to drop sessions unless
        ``force``."""
        desired = _keep_redacted_secrets(config, self._cfg())
        desired = cfgmod.validate(desired, stat_files=False)

        def edit(cfg: dict[str, Any]) -> None:
            cfg.clear()
            cfg.update(desired)

        out = await self._mutate(edit, dry_run=dry_run, force=bool(force))
        return {"changes": out["changes"], "dry_run": dry_run}

    async def op_config_reload(self, dry_run: bool = False, force: bool = False) -> dict[str, Any]:
        """Apply the saved config file, as :meth:`op_config_apply` does."""
        desired = cfgmod.load(self.state_dir)
        if desired is None:
            raise ApiError(
                "not_found", f"no config file at {cfgmod.config_path(self.state_dir)}",
                kind="config",
            )  # fmt: skip
        return await self.op_config_apply(desired, dry_run=dry_run, force=force)

    def op_config_save(self) -> dict[str, Any]:
        cfg = self._cfg()
        cfgmod.save(self.state_dir, cfg)
        return {"path": str(cfgmod.config_path(self.state_dir)), "epoch": cfg["epoch"]}


# ---------------------------------------------------------------------------- helpers


def _too_long() -> dict[str, Any]:
    err = ApiError("bad_request", f"the request is longer than {MAX_LINE} bytes")
    return {"v": API_VERSION, "id": None, "ok": False, "error": err.to_json()}


def _store_size(lu_obj: Any) -> int | None:
    try:
        return int(lu_obj.store.size)
    except Exception:  # an unreachable store has no size to show
        return None


def _size(value: Any) -> int:
    from ..backstore.size import parse_size

    try:
        n = parse_size(value if isinstance(value, int) else str(value))
    except ValueError as e:
        raise ApiError("invalid", str(e), kind="size", hint="e.g. 10GiB, 512MiB, 1T") from None
    if n <= 0:
        raise ApiError("invalid", "the size must be larger than 0", kind="size")
    return n


def _rule(initiator: str | None, network: str | None, force: bool) -> dict[str, Any]:
    if (initiator is None) == (network is None):
        raise ApiError(
            "bad_request", "give exactly one of an initiator name or an address", kind="acl"
        )
    if network is not None:
        if not is_network(network):
            raise ApiError(
                "invalid", f"{network!r} is not ALL, an IP address or a CIDR network", kind="acl",
                hint="e.g. ALL, 192.168.1.10, 10.0.0.0/24, fd00::/64",
            )  # fmt: skip
        return {"network": "ALL" if network.upper() == "ALL" else network}
    assert initiator is not None
    try:
        validate_name(initiator, force=force)
    except InvalidName as e:
        raise ApiError(
            "invalid", str(e), kind="name",
            hint="fix the initiator name (see /etc/iscsi/initiatorname.iscsi), or --force",
        ) from None  # fmt: skip
    rule: dict[str, Any] = {"initiator": initiator}
    if force:
        rule["forced"] = True
    return rule


def _rule_key(rule: dict[str, Any]) -> str:
    return rule.get("initiator") or rule["network"]


def _unbind(holder: dict[str, Any], user: str) -> None:
    if user in holder.get("incoming", []):
        holder["incoming"].remove(user)
    if holder.get("outgoing") == user:
        holder["outgoing"] = None


def _keep_redacted_secrets(new: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """An exported (redacted) config applied back keeps the secrets the daemon has."""
    accounts = new.get("accounts")
    if not isinstance(accounts, dict):
        return new
    fixed = {}
    for user, secret in accounts.items():
        if secret == cfgmod.REDACTED:
            if user not in current["accounts"]:
                raise ApiError(
                    "invalid", f"accounts.{user}: the secret is redacted and the daemon has no"
                    " such account to keep it from", kind="account",
                    hint="export with --show-secrets, or put the secret in the file",
                )  # fmt: skip
            secret = current["accounts"][user]
        fixed[user] = secret
    return {**new, "accounts": fixed}


def _alive(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(str(path))
        return True
    except OSError as e:
        return e.errno not in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK)
    finally:
        s.close()


def _volume_error(location: str, e: BaseException) -> ApiError:
    return ApiError(
        "unavailable", f"cannot reach the group definition at {location}: {e}", kind="group",
        hint="is the volume reachable from this gateway? (the change was not made)",
    )


def _keyed(status: Any) -> dict[str, Any]:
    """The runtime's group status with ``gateways`` and ``luns`` keyed by name and gfid,
    whether it gave dicts or lists of rows."""
    if not isinstance(status, dict):
        return {}
    out = dict(status)
    for key, idkey in (("gateways", "name"), ("luns", "gfid")):
        v = status.get(key)
        if isinstance(v, list):
            out[key] = {r.get(idkey) or r.get("key"): r for r in v if isinstance(r, dict)}
    return out
