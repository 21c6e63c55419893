"""Steps 1 and 2, filter and sort: keep the pipeline's records, decode them, and file their rows per table.

Sort is pure CPU and never waits on a database: it decodes each packet (:mod:`kapow.contract`), resolves each of
its destinations against the config (:mod:`kapow.pipeline.route`) and files a row under the table it goes to.
Whether the row fits its table is validated later, by the lane that owns the table's catalog entry
(:mod:`kapow.postgres.validate`); values are checked by PostgreSQL itself.

No record can stop the loop here: whatever raises while one record is handled (a header, a value, a destination)
fails that record alone, with a code, on an error topic.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import msgspec

from kapow.bytecache import ByteCache
from kapow.config import Config
from kapow.contract import Destination, PacketDecoder, TableKey, intern_keys
from kapow.errors import ErrorCode, Failure, PacketError, Scope
from kapow.pipeline.batch import Batch, TopicCounts
from kapow.pipeline.filter import is_pipeline_record
from kapow.pipeline.route import Route, Router, RouteSpec
from kapow.pipeline.work import LARGE_PACKET, PACKET_OVERHEAD, ErrorRecord, Row, TableWork

if TYPE_CHECKING:
    from confluent_kafka import Message

log = logging.getLogger(__name__)

MAX_KEYSETS = 4096  # distinct sets of column names interned (a table sees a few; hostile ones are not interned)


class Sorter:
    """Turns consumed records into a :class:`Batch` and its table works."""

    def __init__(self, config: Config) -> None:
        p = config.pipeline
        self.decoder = PacketDecoder(max_bytes=p.max_packet_bytes, max_depth=p.max_json_depth,
                                     max_destinations=p.max_destinations)
        self.router = Router(config)
        # What repeats from packet to packet, resolved once: a context's routes, and one shared tuple per set of
        # column names (so that the lanes group rows by identity and validate a shape once, not each row)
        self._routes: ByteCache[tuple[tuple[Destination, Route | Failure], ...]] = ByteCache(
            max_bytes=PacketDecoder.CACHE_BYTES, max_key_bytes=PacketDecoder.MAX_CACHED_VALUE)
        self._keysets: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._names: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())  # the last names read, and interned
        # the last small context and its routes: consecutive packets nearly always carry the same bytes, and
        # comparing them costs less than hashing them for the cache
        self._last: tuple[msgspec.Raw, tuple[tuple[Destination, Route | Failure], ...]] | None = None
        self._hot: tuple[TableKey, TableWork] | None = None  # the last table filed in this batch, and its work

    def sort(self, seq: int, msgs: list[Message]) -> tuple[Batch, list[TableWork]]:
        batch = Batch(seq=seq)
        works: dict[TableKey, TableWork] = {}
        self._hot = None
        offsets = batch.offsets
        topics = batch.topics
        routed, decoder, file = self.router.routes, self.decoder, self._file  # looked up once, not per record
        # Records come in runs of one partition: its counts and route are looked up, and its offset stored, once
        # per run (the offsets of a partition only grow within a batch, so its last run's last record is its end)
        run_topic: str = ""
        run_partition: int | None = None  # no run yet
        last = None
        counts = TopicCounts()
        route: RouteSpec | None = None
        for msg in msgs:
            topic = msg.topic() or ""
            partition = msg.partition() or 0
            if partition != run_partition or topic != run_topic:
                if last is not None:
                    offsets[(run_topic, last.partition() or 0)] = last.offset() or 0
                run_topic, run_partition = topic, partition
                found = topics.get(topic)
                counts = topics[topic] = TopicCounts() if found is None else found
                route = routed.get(topic)
            last = msg
            try:
                if route is not None:  # a routed topic: no envelope, no header, one fixed table
                    if self._file_routed(batch, works, msg, route):
                        counts.passed += 1
                    else:
                        counts.filtered += 1
                    continue
                if not is_pipeline_record(decoder, msg):
                    counts.filtered += 1
                    continue
                counts.passed += 1
                file(batch, works, msg)
            except Exception as exc:  # a bug met on one record fails that record alone
                log.exception("unexpected error sorting %s[%s]@%s", msg.topic(), msg.partition(), msg.offset())
                failure = Failure(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}"[:300], Scope.TABLE)
                batch.errors.append(ErrorRecord(msg, failure, None))
        if last is not None:
            offsets[(run_topic, last.partition() or 0)] = last.offset() or 0
        self._hot = None  # not kept until the next batch: its rows hold their packets
        batch.received = len(msgs)
        batch.filtered = sum(c.filtered for c in topics.values())
        batch.packets = batch.received - batch.filtered
        if msgs:
            batch.first_ts_ms = msgs[0].timestamp()[1]
            batch.last_ts_ms = msgs[-1].timestamp()[1]
        return batch, list(works.values())

    def _file_routed(self, batch: Batch, works: dict[TableKey, TableWork], msg: Message, route: RouteSpec) -> bool:
        """File a routed record; False when it is skipped (a tombstone the route does not delete with)."""
        value = msg.value()
        fmt = route.config.format
        if value is None and (fmt == "debezium" or not route.deletes):
            return False  # tombstones of a Debezium topic only serve compaction; json routes: counted, skipped
        try:
            if value is None:
                dest = route.dests["delete"]
                doc = tombstone_row(msg.key(), route)
                row = Row(msg, doc, self.decoder.keys(doc), dest)
            elif len(value) > self.decoder.max_bytes:
                raise PacketError(ErrorCode.TOO_LARGE,
                                  f"record is {len(value)} bytes, the limit is {self.decoder.max_bytes}")
            elif fmt == "debezium":  # decoded by the lane, which knows the table's column types
                row = Row(msg, b"", (), route.dests["upsert"], route)
            else:
                keys = self.decoder.keys(value)
                values = self.decoder.values if len(value) <= LARGE_PACKET else None  # (see _file)
                row = Row(msg, value, keys, route.dests[route.config.mode], None, values)
        except PacketError as exc:
            batch.errors.append(ErrorRecord(msg, exc.failure, route.dests[route.config.mode]))
            return True
        work = works.get(route.key)
        if work is None:
            work = works[route.key] = TableWork(route.key, route.destination, [], batch.seq, 0)
        work.rows.append(row)
        size = len(value or b"") + PACKET_OVERHEAD
        if row.values is not None and value is not None:
            size += values_bytes(len(value), value.isascii(), len(row.keys))
        work.nbytes += size
        if size > LARGE_PACKET:
            work.large += size
        return True

    def _file(self, batch: Batch, works: dict[TableKey, TableWork], msg: Message) -> None:
        value = msg.value()
        try:
            # views into the value, not copies (PacketDecoder.split_raw): the row keeps its ``data`` as one
            # view, whose packet its record holds anyway
            view, doc = self.decoder.split_raw(value)
            last = self._last
            if last is not None and view == last[0]:  # a view equals a view of the same bytes
                routes = last[1]
            else:
                context = bytes(view)
                cached = self._routes.get(context)
                routes = self._resolve(context) if cached is None else cached
                if len(context) <= PacketDecoder.MAX_CACHED_VALUE:
                    self._last = (msgspec.Raw(context), routes)  # its own bytes: never holds a whole packet
            keys = self.decoder.keys(doc)
            # the decoded values a COPY would send, kept with the row; not for a large packet, whose values would
            # hold as much memory again as its value does (the bound counts the value once)
            values = self.decoder.values if len(value) <= LARGE_PACKET else None  # type: ignore[arg-type]
        except PacketError as exc:
            batch.errors.append(ErrorRecord(msg, exc.failure, None))
            return
        if keys is not self._names[0]:  # a row of the previous row's shape comes with the very same tuple
            self._names = (keys, intern_keys(self._keysets, keys, MAX_KEYSETS))
        keys = self._names[1]
        size = len(value) + PACKET_OVERHEAD  # type: ignore[arg-type]  # split refused None
        if values is not None:
            size += values_bytes(len(doc), value.isascii(), len(keys))  # type: ignore[union-attr]
        for dest, route in routes:
            if isinstance(route, Failure):
                batch.errors.append(ErrorRecord(msg, route, dest))
                continue
            key, config = route
            hot = self._hot
            if hot is not None and hot[0] is key:  # routes are cached: one key object per table
                work = hot[1]
            else:
                found = works.get(key)
                work = works[key] = TableWork(key, config, [], batch.seq, 0) if found is None else found
                self._hot = (key, work)
            work.rows.append(Row(msg, doc, keys, dest, None, values))
            work.nbytes += size
            if size > LARGE_PACKET:
                work.large += size

    def _resolve(self, context: bytes) -> tuple[tuple[Destination, Route | Failure], ...]:
        """Each destination of a context with its route (or the failure that refuses it): what packets carrying
        these bytes resolve to, cached by them (small contexts only; the router bounds its own cache too)."""
        routes = tuple((dest, self.router.route(dest)) for dest in self.decoder.destinations(context))
        self._routes.put(context, routes)
        return routes


def values_bytes(text: int, ascii: bool, columns: int) -> int:
    """What a row's decoded values (kept for a COPY) hold, at most, for the memory bound: an object per column
    (64 bytes covers a Struct slot and a str's or int's header) and the ``text`` bytes of ``data`` again, four
    times over when the packet is not ASCII (one emoji makes CPython store a string at four bytes a character)."""
    return 64 * columns + text * (1 if ascii else 4)


def tombstone_row(key: bytes | None, route: RouteSpec) -> bytes:
    """The row a tombstone deletes: its key when that is a JSON object, else the key as the route's one key
    column (a plain string or number key)."""
    if key is None:
        raise PacketError(ErrorCode.MISSING_KEY, "a tombstone without a key deletes nothing")
    stripped = key.strip()
    if stripped.startswith(b"{"):
        return stripped
    columns = route.config.key or []
    if len(columns) != 1:
        raise PacketError(ErrorCode.MISSING_KEY, "a tombstone's key must be a JSON object of the key columns, or"
                                                 " the route must name its one key column (key = [\"id\"])")
    try:
        value = msgspec.json.decode(stripped)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        value = key.decode("utf-8", "replace")
    if isinstance(value, dict | list):
        raise PacketError(ErrorCode.MISSING_KEY, "a tombstone's key is not a key value")
    return msgspec.json.encode({columns[0]: value})
