"""Resolve a packet's destination against the config: which table, which database's settings, or why not.

Only configured destinations are reachable (PRODUCT.md §3): the vanity must name a configured server and the
database one of its databases; the schema and table must be plain identifiers (they are quoted anyway, never
spliced) outside the system schemas and inside the allowlists; the mode must be one the server allows, and any
key, version or metadata column a plain identifier. Each verdict depends only on the destination entry, which
repeats from packet to packet, so it is cached by the entry; the cache belongs to the router (one per loop),
holds only small entries and is capped, so hostile traffic with ever-new, huge destinations costs CPU, never
memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from kapow.bytecache import CostCache
from kapow.config import Config, DestinationConfig, RouteConfig
from kapow.contract import (
    MODES,
    SINK_TYPES,
    SYSTEM_SCHEMAS,
    Destination,
    Metadata,
    TableKey,
    check_identifier,
    shorten,
)
from kapow.errors import ErrorCode, Failure, PacketError

Route = tuple[TableKey, DestinationConfig]


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """A ``[[routes]]`` entry, resolved once: its table, its server's config and a destination per mode."""

    config: RouteConfig
    key: TableKey
    destination: DestinationConfig
    dests: dict[str, Destination]  # mode -> the destination rows of that mode carry (key, version, metadata)
    source_columns: tuple[tuple[str, str], ...]  # ("lsn" | "ts_ms", column): filled from a Debezium event
    max_bytes: int = 1024 * 1024
    max_depth: int = 32

    @property
    def deletes(self) -> bool:
        """Whether a tombstone (or a Debezium delete) may delete: the route upserts or deletes, and the server
        allows deletes."""
        return "delete" in self.destination.modes and (self.config.format == "debezium"
                                                        or self.config.mode in ("upsert", "delete"))


def route_specs(config: Config) -> dict[str, RouteSpec]:
    """Every route of the config by its topic (the config was checked: vanity and database exist)."""
    out: dict[str, RouteSpec] = {}
    for route in config.routes:
        dest_config = config.destination(route.vanity)
        assert dest_config is not None
        meta = route.metadata or {}
        kafka_fields = {k: v for k, v in meta.items() if k in ("offset", "partition", "topic", "timestamp", "key")}
        metadata = Metadata(**kafka_fields) if kafka_fields else None
        key = tuple(route.key) if route.key else None
        dests = {mode: Destination(route.vanity, route.database, route.table, schema=route.schema, mode=mode,
                                   key=key, version=route.version, metadata=metadata) for mode in MODES}
        source = tuple((k, v) for k, v in meta.items() if k in ("lsn", "ts_ms"))
        out[route.topic] = RouteSpec(route, TableKey(route.vanity, route.database, route.schema, route.table),
                                     dest_config, dests, source, config.pipeline.max_packet_bytes,
                                     config.pipeline.max_json_depth)
    return out


def _names(dest: Destination) -> list[str]:
    """Every string a destination carries: its names, its key's columns, its version and metadata columns."""
    names = [dest.vanity, dest.database, dest.schema, dest.table, dest.type, dest.mode]
    if dest.key:
        names.extend(dest.key)
    if dest.version is not None:
        names.append(dest.version)
    if dest.metadata is not None:
        names.extend(column for _field, column in dest.metadata.columns())
    return names


def _cost(dest: Destination) -> int:
    """What a cached route holds, roughly, in bytes: every string of the destination twice (in it, and in the
    refusal's message or the route's table key), at four bytes a character when it is not ASCII, an object
    header each, and ~1 kB of objects around them. Every string counts: a review cached a destination whose
    metadata column was 1 MB at 1 kB counted (200 packets held 100 MB)."""
    return 1024 + sum(2 * (len(s) if s.isascii() else 4 * len(s)) + 64 for s in _names(dest))


class Router:
    """Destination -> (table key, its server's config), or the user :class:`Failure` that refuses it."""

    # What the cache may hold, in bytes as counted by _cost: ~1 kB an entry for ordinary names. A count alone
    # (100,000 entries) let a stream of ever-new table names hold ~130 MB here (a hostile run, 2026-11-27).
    MAX_BYTES = 16 * 1024 * 1024
    MAX_NAME = 256  # entries with a longer name (of a table, a key column, a metadata column) are never cached
    MAX_NAMES = 64  # nor entries of more names than this (a key of many columns): resolved every time

    def __init__(self, config: Config) -> None:
        self._config = config
        self._cache: CostCache[Destination, Route | Failure] = CostCache(_cost, max_bytes=self.MAX_BYTES)
        self.routes = route_specs(config)

    def full(self) -> bool:
        """Whether caching an ordinary destination (~1.3 kB as counted) would evict another now."""
        return self._cache.full(2048)

    def route(self, dest: Destination, *, cache: bool = True) -> Route | Failure:
        """``dest``'s verdict, cached by it (unless not ``cache``: a destination met once, see the sorter's)."""
        cached = self._cache.get(dest)
        if cached is not None:
            return cached
        try:
            verdict: Route | Failure = self._resolve(dest)
        except PacketError as exc:
            verdict = exc.failure
        if not cache:
            return verdict
        names = _names(dest)
        if len(names) <= self.MAX_NAMES and max(map(len, names)) <= self.MAX_NAME:
            self._cache.put(dest, verdict)
        return verdict

    def _resolve(self, dest: Destination) -> Route:
        if dest.type not in SINK_TYPES:
            raise PacketError(
                ErrorCode.UNSUPPORTED_DESTINATION_TYPE,
                f"destination type {shorten(dest.type)!r} is not supported"
                f" (supported: {', '.join(sorted(SINK_TYPES))})",
            )
        cfg = self._config.destination(dest.vanity)
        if cfg is None:
            raise PacketError(ErrorCode.UNKNOWN_DESTINATION, f"vanity {shorten(dest.vanity)!r} is not configured")
        if dest.database not in cfg.databases:
            raise PacketError(
                ErrorCode.UNKNOWN_DESTINATION,
                f"database {shorten(dest.database)!r} is not configured for vanity {shorten(dest.vanity)!r}",
            )
        check_identifier("schema", dest.schema)
        check_identifier("table", dest.table)
        if SYSTEM_SCHEMAS.fullmatch(dest.schema):
            raise PacketError(ErrorCode.FORBIDDEN_DESTINATION, f"schema {dest.schema!r} is a system schema")
        if cfg.schemas is not None and dest.schema not in cfg.schemas:
            raise PacketError(
                ErrorCode.FORBIDDEN_DESTINATION, f"schema {dest.schema!r} is not allowed for {dest.vanity!r}"
            )
        if cfg.tables is not None and f"{dest.schema}.{dest.table}" not in cfg.tables and dest.table not in cfg.tables:
            raise PacketError(
                ErrorCode.FORBIDDEN_DESTINATION,
                f"table {dest.schema}.{dest.table} is not allowed for {dest.vanity!r}",
            )
        if dest.mode not in MODES:
            raise PacketError(ErrorCode.BAD_PACKET,
                              f"mode {shorten(dest.mode)!r} is not one of {', '.join(MODES)}")
        if dest.mode not in cfg.modes:
            raise PacketError(ErrorCode.FORBIDDEN_MODE,
                              f"mode {dest.mode!r} is not allowed for {dest.vanity!r}"
                              f" (allowed: {', '.join(cfg.modes)})")
        for column in (*(dest.key or ()), *([dest.version] if dest.version else [])):
            check_identifier("column", column, ErrorCode.BAD_PACKET)
        if dest.key is not None and not dest.key:
            raise PacketError(ErrorCode.BAD_PACKET, "key must name at least one column")
        if dest.metadata is not None:
            filled: dict[str, str] = {}
            for name, column in dest.metadata.columns():
                check_identifier("column", column, ErrorCode.BAD_PACKET)
                if column in filled:  # (the last field won, silently)
                    raise PacketError(ErrorCode.BAD_PACKET, f"metadata fills column {column!r} from both the"
                                                            f" record's {filled[column]} and its {name}: give each its"
                                                            " own column")
                filled[column] = name
        return TableKey(dest.vanity, dest.database, dest.schema, dest.table), cfg
