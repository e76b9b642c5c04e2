"""What the control layer needs of a running daemon, as a type (``server.daemon.Daemon``
implements it; ``tests/control/fakes.py`` has an in-memory one).

The control API and ``reconcile`` reach the daemon only through :class:`DaemonControl`:
its targets, its portals (bound in one step, opened in another, so a change that fails
half-way closes what it bound without an initiator ever seeing it), its sessions, the login
keys and connection settings new connections take, the executor for blocking work, and
what ``status`` shows (io_uring, the memory budget, the connection caps).
"""

from __future__ import annotations

from collections.abc import Awaitable, Sized
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, Protocol

from ..model.targets import Portal, Target, TargetRegistry


class Binding(Protocol):
    """A portal's address, bound and listening, not yet accepting (``Daemon.bind_portal``)."""

    @property
    def portal(self) -> Portal: ...

    def close(self) -> None:
        """Give the address back (a change that is rolled back)."""


class Budget(Protocol):
    """The daemon's memory budget for commands' data (``gluster_iscsi.buffers.MemoryBudget``)."""

    @property
    def limit(self) -> int: ...

    @property
    def share(self) -> int: ...

    @property
    def used(self) -> int: ...

    @property
    def peak(self) -> int: ...


class ConnectionLimits(Protocol):
    """The daemon's connection caps (``server.admission.Limits``)."""

    @property
    def max_connections(self) -> int: ...

    @property
    def max_connections_per_host(self) -> int: ...

    @property
    def max_prelogin(self) -> int: ...

    @property
    def max_prelogin_per_host(self) -> int: ...


class DaemonControl(Protocol):
    """A running daemon, as ``control/`` drives it."""

    #: the login keys every target offers unless its own params say otherwise (edited in
    #: place by a change of the global params)
    params: dict[str, str]
    #: what new connections take: NOP-In interval and timeout (s), commands per session
    nop_interval: float
    nop_timeout: float
    queue_depth: int

    @property
    def state_dir(self) -> Path: ...

    @property
    def registry(self) -> TargetRegistry: ...

    @property
    def store_executor(self) -> Executor | None:
        """Where blocking control work runs (opening stores, name lookups); None: the loop's
        default executor."""

    @property
    def io_uring(self) -> bool:
        """Whether io_uring was asked for (``serve --no-io-uring`` turns it off)."""

    @property
    def ring_calls(self) -> int | None:
        """Reads and writes io_uring has taken so far; None: no ring (off or refused)."""

    @property
    def gfapi_async(self) -> bool:
        """Whether asynchronous gfapi calls were asked for (``serve --no-gfapi-async``)."""

    @property
    def gfaio_calls(self) -> int | None:
        """Reads and writes started as asynchronous gfapi calls; None: not in use (yet)."""

    def stores_opened(self) -> None:
        """Stores were just opened (which may have started library threads: libgfapi's): the
        daemon applies its thread policies to them now rather than at its next timer."""

    def scheduling_status(self) -> dict[str, Any]:
        """libgfapi's event threads' CPU scheduling (``serve --gfapi-sched-policy``), for status."""

    @property
    def budget(self) -> Budget: ...

    #: The read caches' memory target (``server.memory.MemoryGovernor``: ``status()``), or
    #: None where nothing drives it.
    memory_governor: Any

    @property
    def limits(self) -> ConnectionLimits: ...

    @property
    def connections(self) -> Sized:
        """The open connections (logged in or not)."""

    # ------------------------------------------------------------------ targets
    def add_target(self, target: Target) -> None: ...

    def remove_target(self, name: str) -> Awaitable[None]:
        """Close the target's sessions and take it out of the registry."""

    # ------------------------------------------------------------------ portals
    def portals(self) -> list[Portal]:
        """The portals listening now."""

    def bind_portal(self, portal: Portal) -> Binding:
        """Bind and listen without accepting (blocking: a name lookup); raises OSError."""

    def open_portal(self, binding: Binding) -> Awaitable[Portal]:
        """Start accepting on what :meth:`bind_portal` returned; returns the portal as
        recorded (an ephemeral port filled in)."""

    def add_portal(self, portal: Portal) -> Awaitable[None]:
        """Bind and open in one step (an undo that reopens a closed portal)."""

    def remove_portal(self, portal: Portal) -> Awaitable[None]:
        """Stop listening and close the connections that came in through the portal."""

    def set_portal_advertise(self, portal: Portal) -> None:
        """Change what SendTargets advertises for a listening portal, without reopening it."""

    def connections_on(self, portal: Portal) -> int:
        """Connections (logged in or not) that came in through the portal."""

    # ------------------------------------------------------------------ sessions
    def sessions(self) -> list[dict[str, Any]]:
        """Every session, as ``session list --json`` shows it (docs/CLI-JSON.md)."""

    def close_session(self, tsih: int) -> Awaitable[bool]:
        """Close the session with this TSIH; False if there is none."""

    # ------------------------------------------------------------------ counters
    def lun_stats(self) -> list[dict[str, Any]]:
        """Every LUN's counters, as ``lun stats --json`` shows them (docs/CLI-JSON.md)."""

    # ------------------------------------------------------------------ write-behind
    @property
    def write_behind(self) -> int:
        """Each lone gfapi LUN's write-behind window, bytes (``serve --write-behind``; 0: off)."""

    def write_behind_status(self, lu: Any) -> dict[str, Any]:
        """A LUN's write-behind as ``lun list --json`` shows it (docs/CLI-JSON.md)."""

    def write_behind_drain(self, lu: Any) -> Awaitable[None]:
        """Before the LUN's store closes: no more write-behind on it, and the writes it
        acknowledged early written (each bounded by the I/O timeout)."""

    def write_behind_resume(self, lu: Any) -> None:
        """The LUN serves on after :meth:`write_behind_drain` (the change that would have
        closed it was undone): write-behind on it again."""

    # ------------------------------------------------------------------ the gateway group
    def group_status(self) -> dict[str, Any] | None:
        """The gateway group as this daemon sees it (docs/HA.md): ``gateway``, ``number``,
        ``beat_seconds``, ``lease_seconds``, ``luns`` (key -> owner, epoch, role,
        state_version, move_to, issue_deadline_in), ``gateways`` (name -> number, beat, age,
        live, version); None when the daemon is not in a group."""

    def group_move(self, lun_key: str, gateway: str) -> Awaitable[None]:
        """Ask the owner of the group LUN ``lun_key`` (its file's GFID) to hand it to
        ``gateway``; the move itself completes asynchronously (``group_status`` shows it).
        Raises ValueError when not in a group or ``gateway`` is unknown, KeyError for an
        unknown LUN."""
