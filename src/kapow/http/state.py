"""What the HTTP handlers share, kept on ``app.state.kapow``: the writer's view, the config and the services.

The handlers are module-level functions (:mod:`.health`, :mod:`.dlq`, :mod:`.user_errors`, :mod:`.stats`,
:mod:`.audit`, :mod:`.pages`) that read this one object; :func:`kapow.http.api.create_app` builds it and wires
the routes. Each service owns its own lock and cache, so there is no module-level state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from starlette.requests import Request

if TYPE_CHECKING:
    from kapow.config import Config
    from kapow.http.audit import Audits
    from kapow.http.dlq import Dlq
    from kapow.http.stats import Stats
    from kapow.http.user_errors import UserErrors


class DestinationsView(Protocol):
    """Circuits and pools of the writer's destinations, keyed by (vanity, database)."""

    def circuits(self) -> dict[tuple[str, str], Any]:
        """Each value has ``.state``: "closed", "half_open" or "open" (shown by /readyz, the console, /api/stats)."""
        ...

    def pools(self) -> dict[tuple[str, str], Any]:
        """Each value has ``.in_use``: connections lent out now (the console's pool bars)."""
        ...


class WriterView(Protocol):
    """What the HTTP side may read from the writer, and nothing more (:class:`kapow.pipeline.runner.Writer` is
    one). Every member is read from the HTTP thread while the loop runs: plain values, never blocking."""

    @property
    def ready(self) -> bool:
        """True once the loop has started and had its first assignment (with ``assigned``: /readyz)."""
        ...

    @property
    def assigned(self) -> set[tuple[str, int]]:
        """The (topic, partition) pairs this process owns now; empty means not ready."""
        ...

    @property
    def totals(self) -> dict[str, int]:
        """Running counts since start: received, filtered, landed, duplicate, user_error, system_error."""
        ...

    @property
    def started_at(self) -> float:
        """Process start, epoch seconds (uptime in /healthz and /api/stats)."""
        ...

    @property
    def destinations(self) -> DestinationsView:
        """Circuits and pools per destination database."""
        ...

    def health(self) -> tuple[bool, str]:
        """(healthy?, why): unhealthy when commits have been stuck past every bound the pipeline sets itself (a
        dead error topic or broker), which a turning loop alone does not show."""
        ...


@dataclass(slots=True)
class AppState:
    """Everything a handler needs; one per app."""

    config: Config
    writer: WriterView
    dlq: Dlq
    user_errors: UserErrors
    audits: Audits
    stats: Stats
    stall_after: float  # seconds without a loop heartbeat before /healthz says "stalled"
    spec: dict[str, Any]  # the OpenAPI document
    index: bytes  # the console's page
    assets: dict[str, bytes]  # the console's files, by name


def destinations(state: AppState) -> list[dict[str, Any]]:
    """Every configured (vanity, database): its server, circuit and pool use."""
    circuits = state.writer.destinations.circuits()
    pools = state.writer.destinations.pools()
    out = []
    for dest in state.config.destinations:
        for database in dest.databases:
            circuit = circuits.get((dest.vanity, database))
            pool = pools.get((dest.vanity, database))
            out.append({"vanity": dest.vanity, "database": database, "host": dest.host, "port": dest.port,
                        "circuit": circuit.state if circuit is not None else "closed",
                        "pool_in_use": pool.in_use if pool is not None else 0,
                        "max_connections": dest.max_connections})
    return out


def is_ready(state: AppState) -> bool:
    return bool(state.writer.ready and state.writer.assigned)


def state_of(request: Request) -> AppState:
    found: AppState = request.app.state.kapow
    return found
