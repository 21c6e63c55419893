"""Step 3, persist: hand each table's rows to its database's lane and collect the answers.

The loop never waits on a database: :meth:`Persister.submit` only queues a work in its lane
(:mod:`kapow.pipeline.lane`), and the answers come back through one thread-safe queue that the loop drains
between polls. So a slow or dead database delays only its own packets; the loop keeps consuming, sorting and
committing everything else, up to the memory bound (``pipeline.max_buffer_bytes``).

The persister owns the answer queue the lanes share, and gives each lane its own table catalog (bounded in bytes,
the budget split between databases: no lock is shared by the workers of different databases). Lanes are
created on first use, one per configured (vanity, database); a packet can only reach a configured database
(sort refuses the rest), so their number is bounded by the config, never by clients.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from kapow.config import Config
from kapow.contract import TableKey
from kapow.errors import one_line
from kapow.pipeline.lane import DatabaseLane
from kapow.pipeline.parklines import ParkLines
from kapow.pipeline.route import RouteSpec
from kapow.pipeline.work import TableWork, WorkResult
from kapow.postgres.catalog import Catalog

log = logging.getLogger(__name__)


# A lane that answered (a write or a probe) this recently, with no failure since, is taken as up without a probe:
# the redrive asks once per parked record. 30 s let it republish into a database that had just gone down.
FRESH_S = 2.0


class Persister:
    """The lanes of every configured database, the catalog they share, and the queue of their answers."""

    def __init__(self, config: Config, *, lane_factory: Callable[..., DatabaseLane] = DatabaseLane) -> None:
        self._config = config
        p = config.pipeline
        # One catalog per database (each lane's own: no lock shared by every worker of every database), the byte
        # budget split between the configured databases.
        databases = max(1, sum(len(d.databases) for d in config.destinations))
        self._catalog_bytes = max(1024 * 1024, p.catalog_max_bytes // databases)
        self._answers: queue.SimpleQueue[WorkResult] = queue.SimpleQueue()
        self._lanes: dict[tuple[str, str], DatabaseLane] = {}
        self._lock = threading.Lock()
        self._lane_factory = lane_factory
        self._park_lines = ParkLines()  # one budget of "parking" lines for every lane (kapow.pipeline.parklines)

    def lane(self, vanity: str, database: str) -> DatabaseLane:
        key = (vanity, database)
        lane = self._lanes.get(key)
        if lane is None:
            with self._lock:
                lane = self._lanes.get(key)
                if lane is None:
                    dest = self._config.destination(vanity)
                    if dest is None or database not in dest.databases:
                        raise KeyError(f"{vanity}/{database} is not configured")
                    p = self._config.pipeline
                    catalog = Catalog(ttl=p.catalog_ttl_s, max_bytes=self._catalog_bytes)
                    lane = self._lane_factory(vanity=vanity, database=database, config=dest, pipeline=p,
                                              catalog=catalog, deliver=self._answers.put,
                                              park_lines=self._park_lines)
                    self._lanes[key] = lane
        return lane

    def lanes(self) -> dict[tuple[str, str], DatabaseLane]:
        with self._lock:
            return dict(self._lanes)

    def submit(self, work: TableWork) -> None:
        self.lane(work.key.vanity, work.key.database).submit(work)

    def submit_all(self, works: list[TableWork]) -> None:
        """Queue a batch's works, grouped by database: one hand-over per lane, not one per table."""
        by_lane: dict[tuple[str, str], list[TableWork]] = {}
        for work in works:
            by_lane.setdefault((work.key.vanity, work.key.database), []).append(work)
        for (vanity, database), group in by_lane.items():
            self.lane(vanity, database).submit_all(group)

    def collect(self, timeout: float = 0.0) -> list[WorkResult]:
        """Every answer ready now; with a ``timeout``, wait that long for the first one."""
        out: list[WorkResult] = []
        try:
            out.append(self._answers.get(timeout=timeout) if timeout > 0 else self._answers.get_nowait())
        except queue.Empty:
            return out
        while True:
            try:
                out.append(self._answers.get_nowait())
            except queue.Empty:
                return out

    @property
    def queued_bytes(self) -> int:
        return sum(lane.queued_bytes for lane in self.lanes().values())

    def stuck_bytes(self) -> int:
        """Bytes queued behind a held table or an open circuit, in every lane (see :meth:`DatabaseLane.stuck_bytes`)."""
        return sum(lane.stuck_bytes() for lane in self.lanes().values())

    def shed(self) -> int:
        """Park what is held (see :meth:`DatabaseLane.shed`); the bytes freed."""
        return sum(lane.shed() for lane in self.lanes().values())

    def cancel(self, *, running: bool = False) -> int:
        """Drop every queued work in every lane (revoke, stop); with ``running``, cancel statements under way."""
        return sum(lane.cancel(running=running) for lane in self.lanes().values())

    def healthy(self, key: TableKey) -> bool:
        """Would a write to ``key`` go ahead now? (Unconfigured destinations are never healthy.)

        A lane that has not written for a while, or has failed since it last did, is probed first (one connection,
        bounded by its connect timeout), and a failed probe answers no: the redrive never republishes into a
        database that is still down (it did while the circuit counted its first failures, spending the packets'
        redrive attempts: a hostile run).
        """
        try:
            lane = self.lane(key.vanity, key.database)
        except KeyError:
            return False
        if lane.healthy() and not lane.recently_ok(within_s=FRESH_S) and not lane.probe():
            return False  # (the circuit opens only after a few failures: a failed probe is the answer now)
        if lane.healthy() and not lane.healthy(key):
            return lane.probe_table(key)  # a held table with nothing queued: still locked?
        return lane.healthy(key)

    def check_route(self, route: RouteSpec) -> str | None:
        """A route's table, read now: the reason it cannot take the route's records, or None when it can (or when
        its database cannot be reached: the lane holds its records until it can)."""
        from kapow.postgres.catalog import load_tables, not_a_table
        from kapow.postgres.validate import key_columns

        key = route.key
        lane = self.lane(key.vanity, key.database)
        try:
            with lane.pool.connection() as conn:
                table = load_tables(conn, [(key.schema, key.table)]).get((key.schema, key.table))
        except Exception as exc:
            log.warning("route %s: cannot read its table now (%s); its records wait for the database", key.label,
                        one_line(exc))
            return None
        if table is None:
            return f"table {key.schema}.{key.table} does not exist in database {key.database!r}"
        if (refused := not_a_table(table)) is not None:
            return refused
        mode = "upsert" if route.config.format == "debezium" else route.config.mode
        found = key_columns(table, route.dests[mode]) if mode != "insert" or not table.has_unique_key else None
        if found is not None and not isinstance(found, tuple):
            return found.message
        return None

    def close(self, timeout: float = 0.0) -> None:
        for lane in self.lanes().values():
            lane.close(timeout)
