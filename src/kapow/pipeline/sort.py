"""Step 2, sort: decode each packet, check it, and file its rows under the destination tables they go to.

Sort is pure CPU and never waits on a database: a destination whose table is not in the catalog cache yet is
filed unvalidated, and persist (which owns the connections, the retries and the circuit breakers) loads the
table and validates those rows. Every per-packet check here is a dict lookup or a type test; anything finer is
PostgreSQL's input functions, in the batch.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from kapow.contract import SINK_TYPES, Destination, check_identifier, decode_data, decode_envelope
from kapow.errors import ErrorCode, Failure, PacketError
from kapow.pipeline.batch import Batch, ErrorRecord, Group, Row, TableKey
from kapow.pipeline.filter import is_pipeline_record
from kapow.postgres.catalog import Catalog, Table

if TYPE_CHECKING:
    from confluent_kafka import Message

    from kapow.config import Config, DestinationConfig


log = logging.getLogger(__name__)

# Failures a change of the table could cure; a catalog entry older than RECHECK_AFTER_S is reread before they
# are believed, so a client who adds a column and starts sending it is not refused for a whole catalog TTL.
SCHEMA_CODES = frozenset({ErrorCode.UNKNOWN_COLUMN, ErrorCode.MISSING_COLUMN, ErrorCode.UNKNOWN_TABLE,
                          ErrorCode.NO_UNIQUE_KEY})
RECHECK_AFTER_S = 1.0


class Sorter:
    """Turns consumed records into a :class:`Batch`: filter, decode, resolve, validate, group."""

    def __init__(self, config: Config, catalog: Catalog) -> None:
        self._config = config
        self._catalog = catalog
        self._max_bytes = config.pipeline.max_packet_bytes
        self._max_depth = config.pipeline.max_json_depth
        # Destination -> (table key, its config) or the user error; the static part of resolution never changes.
        self._routes: dict[Destination, tuple[TableKey, DestinationConfig] | Failure] = {}

    def sort(self, seq: int, msgs: list[Message]) -> Batch:
        batch = Batch(seq=seq)
        offsets = batch.offsets
        groups = batch.groups
        catalog_get = self._catalog.get
        for msg in msgs:
            offsets[(msg.topic(), msg.partition())] = msg.offset()  # type: ignore[index,assignment]
            if not is_pipeline_record(msg):
                batch.filtered += 1
                continue
            batch.packets += 1
            try:
                destinations, doc = decode_envelope(msg.value(), max_bytes=self._max_bytes)
                data = decode_data(doc, max_depth=self._max_depth)
            except PacketError as exc:
                batch.errors.append(ErrorRecord(msg, exc.failure, None))
                continue
            except Exception as exc:
                log.exception("unexpected error decoding %s[%s]@%s", msg.topic(), msg.partition(), msg.offset())
                batch.errors.append(ErrorRecord(msg, Failure(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}"), None))
                continue
            keys = tuple(data)
            for dest in destinations:
                route = self._routes.get(dest)
                if route is None:
                    route = self._route(dest)
                if isinstance(route, Failure):
                    batch.errors.append(ErrorRecord(msg, route, dest))
                    continue
                key, dest_config = route
                group = groups.get(key)
                if group is None:
                    cached, table = catalog_get(key)
                    group = groups[key] = Group(key, dest, dest_config, table)
                    if cached and table is None:  # known missing: worth a fresh look only once in a while
                        if self._catalog.age(key) < RECHECK_AFTER_S:
                            del groups[key]
                            batch.errors.append(ErrorRecord(msg, unknown_table(key), dest))
                            continue
                        group.reload = True
                row = Row(msg, doc, keys, data)
                if group.table is None:
                    group.unchecked.append(row)
                    continue
                failure = validate(group.table, dest_config, keys, data)
                if failure is None:
                    group.rows.append(row)
                elif failure.code in SCHEMA_CODES and self._catalog.age(key) >= RECHECK_AFTER_S:
                    group.unchecked.append(row)  # the table may have changed since we read it: persist rereads
                    group.reload = True
                else:
                    batch.errors.append(ErrorRecord(msg, failure, dest))
        if msgs:
            batch.received = len(msgs)
            batch.first_ts_ms = msgs[0].timestamp()[1]
            batch.last_ts_ms = msgs[-1].timestamp()[1]
        return batch

    def _route(self, dest: Destination) -> tuple[TableKey, DestinationConfig] | Failure:
        route: tuple[TableKey, DestinationConfig] | Failure
        try:
            route = self._resolve(dest)
        except PacketError as exc:
            route = exc.failure
        if len(self._routes) < 100_000:  # bounded: hostile traffic cannot grow it forever
            self._routes[dest] = route
        return route

    def _resolve(self, dest: Destination) -> tuple[TableKey, DestinationConfig]:
        if dest.type not in SINK_TYPES:
            raise PacketError(
                ErrorCode.UNSUPPORTED_DESTINATION_TYPE,
                f"destination type {dest.type!r} is not supported (supported: {', '.join(sorted(SINK_TYPES))})",
            )
        cfg = self._config.destination(dest.vanity)
        if cfg is None:
            raise PacketError(ErrorCode.UNKNOWN_DESTINATION, f"vanity {dest.vanity!r} is not configured")
        if dest.database not in cfg.databases:
            raise PacketError(
                ErrorCode.UNKNOWN_DESTINATION,
                f"database {dest.database!r} is not configured for vanity {dest.vanity!r}",
            )
        check_identifier("schema", dest.schema)
        check_identifier("table", dest.table)
        if cfg.schemas is not None and dest.schema not in cfg.schemas:
            raise PacketError(
                ErrorCode.FORBIDDEN_DESTINATION, f"schema {dest.schema!r} is not allowed for {dest.vanity!r}"
            )
        if cfg.tables is not None and f"{dest.schema}.{dest.table}" not in cfg.tables and dest.table not in cfg.tables:
            raise PacketError(
                ErrorCode.FORBIDDEN_DESTINATION,
                f"table {dest.schema}.{dest.table} is not allowed for {dest.vanity!r}",
            )
        return (dest.vanity, dest.database, dest.schema, dest.table), cfg


def unknown_table(key: TableKey) -> Failure:
    return Failure(ErrorCode.UNKNOWN_TABLE, f"table {key[2]}.{key[3]} does not exist in database {key[1]!r}")


def validate(table: Table, config: DestinationConfig, keys: tuple[str, ...], data: dict[str, Any]) -> Failure | None:
    """Check one row against the table: table-level rules, then its columns (the verdict is cached per keyset).

    Values are not checked here, on purpose: PostgreSQL's own input functions check them in the batch, in C,
    and a row they refuse is isolated by the writer, which then names the column and its type. A Python check
    per value would cost every packet to spare the rare bad one.
    """
    if not table.has_unique_key and not config.allow_no_unique_key:
        return Failure(
            ErrorCode.NO_UNIQUE_KEY,
            f"table {table.schema}.{table.name} has no primary key or unique constraint, so replays would"
            " duplicate rows; add one (or set allow_no_unique_key for this destination)",
        )
    if not table.can_insert:
        return Failure(ErrorCode.FORBIDDEN_DESTINATION, f"KaPoW may not insert into {table.schema}.{table.name}")
    verdicts = table.keyset_verdicts
    if keys in verdicts:
        problem = verdicts[keys]
    else:
        problem = _check_keys(table, keys)
        if len(verdicts) < 1000:
            verdicts[keys] = problem
    if problem is not None:
        code = ErrorCode.MISSING_COLUMN if problem.startswith("missing") else ErrorCode.UNKNOWN_COLUMN
        return Failure(code, problem)
    return None


def _check_keys(table: Table, keys: tuple[str, ...]) -> str | None:
    columns = table.columns
    unknown = [k for k in keys if k not in columns]
    if unknown:
        shown = ", ".join(repr(k[:64]) for k in unknown[:5])
        return f"unknown column{'s' if len(unknown) > 1 else ''} {shown} in table {table.schema}.{table.name}"
    generated = [k for k in keys if columns[k].generated]
    if generated:
        return f"unknown column {generated[0]!r}: it is generated by {table.schema}.{table.name} and cannot be set"
    missing = table.required.difference(keys)
    if missing:
        names = ", ".join(sorted(missing))
        return f"missing required column{'s' if len(missing) > 1 else ''} {names} (NOT NULL, no default)"
    return None
