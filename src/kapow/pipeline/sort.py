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
from array import array
from itertools import groupby, repeat
from typing import TYPE_CHECKING, Any

import msgspec

from kapow.bytecache import ByteCache, entry_cost
from kapow.config import Config
from kapow.contract import Destination, KeySets, PacketDecoder, TableKey, destination_json
from kapow.errors import ErrorCode, Failure, PacketError, Scope
from kapow.pipeline.batch import Batch, TopicCounts
from kapow.pipeline.filter import is_pipeline_record
from kapow.pipeline.route import Route, Router, RouteSpec
from kapow.pipeline.work import LARGE_PACKET, PACKET_OVERHEAD, ErrorRecord, Row, TableWork, header_bytes, record_bytes

if TYPE_CHECKING:
    from confluent_kafka import Message

log = logging.getLogger(__name__)

RUN_MIN = 16  # records: a shorter run is filed one by one (a whole run's calls cost more than they save)
RUN_SKIP = 4096  # records filed one by one after a run that was not alike at all, before a run is tried whole
# a run with a record over this is filed one by one: each such record's memory is counted by itself (LARGE_PACKET)
ALIKE_MAX_BYTES = 8192
# a run of several contexts is filed whole by context when they average this many records or more (each context
# costs a few calls of its own: routes, lookups, slices); fewer are filed one by one
GROUP_MIN = 4
FRUITLESS_RUNS = 8  # runs of several contexts in a row whose names all still wait for their shapes: then a pause
MAX_KEYSETS = 4096  # distinct sets of column names interned (a table sees a few; hostile ones are not interned)
# contexts met once lately while the caches are full, remembered by their hash in two slots of a fixed array (1 MB):
# one is cached when it comes again (one whose slots others took meanwhile waits for another packet)
SEEN_SLOTS = 1 << 17


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
        self._keysets = KeySets(max_sets=MAX_KEYSETS)
        self._seen = array("q", bytes(8 * SEEN_SLOTS))  # the hash of a context met once, by its slot (_resolve)
        self._names: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())  # the last names read, and interned
        # the last small context and its routes: consecutive packets nearly always carry the same bytes, and
        # comparing them costs less than hashing them for the cache
        self._last: tuple[msgspec.Raw, tuple[tuple[Destination, Route | Failure], ...]] | None = None
        self._hot: tuple[TableKey, TableWork] | None = None  # the last table filed in this batch, and its work
        self._skip_runs = 0  # records left to file one by one before a run is tried whole again
        # records of runs with several contexts left to file one by one before such a run is grouped again (a
        # refused grouping never stops the whole filing of other partitions' one-context runs)
        self._skip_groups = 0
        self._fruitless = 0  # runs of several contexts in a row of which no context was read whole

    def sort(self, seq: int, msgs: list[Message]) -> tuple[Batch, list[TableWork]]:
        batch = Batch(seq=seq)
        works: dict[TableKey, TableWork] = {}
        self._hot = None
        offsets = batch.offsets
        topics = batch.topics
        routed = self.router.routes
        # Records come in runs of one partition (a fetch's worth): each run is filed at once, and its counts,
        # route and last offset are looked up once. Short runs (a live stream over many partitions) are filed
        # record by record in one loop: a run's own calls cost more than they save there (1.2-1.5x, measured)
        runs = [(key, len(list(run))) for key, run in groupby(zip([m.topic() or "" for m in msgs],
                                                                  [m.partition() or 0 for m in msgs], strict=True))]
        if len(runs) * RUN_MIN > len(msgs):
            self._sort_records(batch, works, msgs)
            runs = []
        start = 0
        for (topic, partition), length in runs:
            end = start + length
            records = msgs[start:end] if start or end < len(msgs) else msgs
            start = end
            found = topics.get(topic)
            counts = topics[topic] = TopicCounts() if found is None else found
            if routed.get(topic) is not None:  # a routed topic (no envelope, no header): record by record
                self._sort_records(batch, works, records)
                continue
            self._file_run(batch, works, records, counts)
            offsets[(topic, partition)] = records[-1].offset() or 0
        self._hot = None  # not kept until the next batch: its rows hold their packets
        batch.received = len(msgs)
        batch.filtered = sum(c.filtered for c in topics.values())
        batch.packets = batch.received - batch.filtered
        if msgs:
            batch.first_ts_ms = msgs[0].timestamp()[1]
            batch.last_ts_ms = msgs[-1].timestamp()[1]
        return batch, list(works.values())

    def _sort_records(self, batch: Batch, works: dict[TableKey, TableWork], msgs: list[Message]) -> None:
        """File ``msgs`` record by record: what :meth:`sort` does for a batch of short runs."""
        offsets, topics = batch.offsets, batch.topics
        routed, decoder, file = self.router.routes, self.decoder, self._file  # looked up once, not per record
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
                _internal(batch, msg, exc)
        if last is not None:
            offsets[(run_topic, last.partition() or 0)] = last.offset() or 0

    def _file_run(self, batch: Batch, works: dict[TableKey, TableWork], run: list[Message],
                  counts: TopicCounts) -> None:
        """File a run of one partition's records: whole, when they are alike (:meth:`_file_alike`), else one by
        one."""
        split: tuple[list[bytes], list[msgspec.Raw], list[msgspec.Raw]] | None = None
        if len(run) >= RUN_MIN:
            if self._skip_runs > 0:
                self._skip_runs -= len(run)
            else:
                try:
                    alike = self._file_alike(batch, works, run, counts)
                except Exception:  # whatever it was, the records are filed one by one, each failing alone
                    log.debug("a run of %d records is filed one by one", len(run), exc_info=True)
                    alike = False
                if isinstance(alike, tuple):
                    split = alike
                elif alike:
                    return
                else:
                    self._skip_runs = RUN_SKIP
        decoder, file = self.decoder, self._file
        values, contexts, docs = split if split is not None else (None, None, None)
        for i, msg in enumerate(run):
            try:
                if split is None and not is_pipeline_record(decoder, msg):
                    counts.filtered += 1
                    continue
                counts.passed += 1
                if values is None or contexts is None or docs is None:
                    file(batch, works, msg)
                else:
                    self._file_split(batch, works, msg, values[i], contexts[i], docs[i])
            except Exception as exc:  # a bug met on one record fails that record alone
                _internal(batch, msg, exc)

    def _file_alike(self, batch: Batch, works: dict[TableKey, TableWork], run: list[Message], counts: TopicCounts
                    ) -> bool | tuple[list[bytes], list[msgspec.Raw], list[msgspec.Raw]]:
        """File a run whose records are alike, whole: True when it did, or filtered them all (none carries the
        pipeline's header); nothing is filed otherwise.

        Alike: one header list, envelopes that all decode, one ``pipeline_context`` (or several, none of whose
        tables another reaches: :meth:`_groups`; traffic spread over tables interleaves them in every partition),
        one set of column names (of each context's records, when there are several) read by one shape
        (:mod:`kapow.keyshapes`), no packet of :data:`LARGE_PACKET`; a context whose rows have other names is filed
        one by one, alone. Then every step is one call over the run (or each context's records), in C, instead
        of one per record (the sorting thread is a third of the writer's CPU, and most of it was the interpreter's
        work between calls). Returns the split envelopes (values, contexts, docs) when the records are all
        pipeline packets that split but are not otherwise alike: they are filed one by one from there; False when
        they are not even that (filed one by one from the start).
        """
        decoder = self.decoder
        headers = [m.headers() for m in run]
        if headers.count(headers[0]) != len(headers):
            return False
        if not decoder.is_pipeline_packet(headers[0]):  # type: ignore[arg-type]
            counts.filtered += len(run)
            return True
        if decoder.only is not None:  # copies for one destination each (kapow-destination): one by one
            return False
        values: list[bytes] = [m.value() for m in run]  # type: ignore[misc]
        # what each record holds beside its value (its headers, one list for the run; its key) is counted too
        extra = header_bytes(headers[0])
        keys_ = [m.key() for m in run]
        keyed = keys_.count(None) != len(keys_)
        longest = max(map(len, filter(None, keys_)), default=0) if keyed else 0  # (no row of a whole run is large)
        if None in values or max(map(len, values)) + extra + longest > min(decoder.max_bytes, ALIKE_MAX_BYTES):
            return False
        key_bytes = sum(len(k) for k in keys_ if k) if keyed else 0
        split = decoder.split_all(values)
        if split is None:
            return False
        contexts, docs = split
        view = contexts[0]
        groups: list[tuple[list[int], list[tuple[Destination, Route]]]] | None = None
        dests: list[tuple[Destination, Route]] = []
        if contexts.count(view) == len(contexts):
            clean = self._clean_routes(view)
            if clean is None:
                return values, contexts, docs  # a failure, or two destinations in one table (rows interleave)
            dests = clean
        else:  # several contexts (traffic to many tables): filed whole by context when no table has two
            if self._skip_groups > 0:
                self._skip_groups -= len(run)
                return values, contexts, docs
            groups = self._groups(contexts)
            if groups is None:
                return values, contexts, docs
        read = decoder.keys_all(docs)
        if groups is None:
            if read is None:  # another table's names (runs of two topics, say), or rows of other names among them
                read = decoder.keys_by_first(docs, tried=True)
            if read is None:  # what was read of them is read again, one by one, so a stream with such a row in
                if not decoder.shape_pending:  # every run is not read twice over (names only met once or not
                    self._skip_runs = RUN_SKIP  # built yet do not count: their next run is read whole)
                return values, contexts, docs
            counts.passed += len(run)
            self._file_whole(batch, works, run, values, docs, read[1], self._interned(read[0]), dests,
                             len(run) * extra + key_bytes)
            return True
        counts.passed += len(run)
        whole = pending = False
        for indices, routes in groups:  # each in offset order; no table is in two groups, so each keeps its order
            part = list(map(docs.__getitem__, indices))
            if read is not None:  # every row of the run has the current shape's names
                keys, decoded = read[0], list(map(read[1].__getitem__, indices))
            else:  # tables of different names: each context's rows by their own shape
                found = decoder.keys_by_first(part)
                if found is None:  # rows of other names among them: this context's records one by one
                    pending = pending or decoder.shape_pending
                    self._file_each(batch, works, run, values, contexts, docs, indices)
                    continue
                keys, decoded = found
            whole = True
            self._file_whole(batch, works, list(map(run.__getitem__, indices)), list(map(values.__getitem__, indices)),
                             part, decoded, self._interned(keys), routes,
                             len(indices) * extra + (key_bytes and sum(len(keys_[i] or b"") for i in indices)))
        # no context's rows read whole: when none may be later either (optional columns, say), or names have only
        # been waiting for their shapes for FRUITLESS_RUNS runs in a row (more tables of their own names than the
        # shapes kept: a helper's review measured 1.1-1.2x the old sort there), runs of several contexts are not
        # tried whole for a while (one context's runs still are)
        self._fruitless = 0 if whole else self._fruitless + 1
        if not whole and (not pending or self._fruitless >= FRUITLESS_RUNS):
            self._skip_groups = RUN_SKIP
            self._fruitless = 0
        return True

    def _interned(self, keys: tuple[str, ...]) -> tuple[str, ...]:
        """The one tuple of these names (rows of one shape share it: the lanes group rows by identity)."""
        if keys is not self._names[0]:
            self._names = (keys, self._keysets.intern(keys))
        return self._names[1]

    def _file_each(self, batch: Batch, works: dict[TableKey, TableWork], run: list[Message], values: list[bytes],
                   contexts: list[msgspec.Raw], docs: list[msgspec.Raw], indices: list[int]) -> None:
        """File the records ``indices`` of a split run one by one (counted as passed already), each failing
        alone."""
        for i in indices:
            try:
                self._file_split(batch, works, run[i], values[i], contexts[i], docs[i])
            except Exception as exc:  # a bug met on one record fails that record alone
                _internal(batch, run[i], exc)

    def _file_whole(self, batch: Batch, works: dict[TableKey, TableWork], run: list[Message], values: list[bytes],
                    docs: list[msgspec.Raw], decoded: list[Any], keys: tuple[str, ...],
                    dests: list[tuple[Destination, Route]], extra: int) -> None:
        """File alike records of one context, read: a row per record for each of its tables, in one call each
        (``extra``: the bytes of the records' headers and keys, counted with them)."""
        # what each row holds (see _file): its value, the overhead, its decoded values; no row is large
        text = sum(map(len, docs))
        if not all(map(bytes.isascii, values)):
            text += 3 * sum(len(d) for d, v in zip(docs, values, strict=True) if not v.isascii())
        n = len(run)
        size = sum(map(len, values)) + n * (PACKET_OVERHEAD + 64 * len(keys)) + text + extra
        for dest, (key, config) in dests:
            work = works.get(key)
            if work is None:
                work = works[key] = TableWork(key, config, [], batch.seq, 0)
            self._hot = (key, work)
            work.rows.extend(map(Row, run, docs, repeat(keys, n), repeat(dest, n), repeat(None, n), decoded))
            work.nbytes += size

    def _groups(self, contexts: list[msgspec.Raw]) -> list[tuple[list[int], list[tuple[Destination, Route]]]] | None:
        """The records of a run by ``pipeline_context``, in the order each context first comes, each with its
        routes: None when there are too many contexts for their records (:data:`GROUP_MIN`: a short run at a
        partition's edge, given up early), or, and then runs of several contexts are not grouped for a while, when
        a route fails or one table is reached by two contexts or twice by one (its rows would have to interleave).
        Holds a copy of each distinct context while it runs: at most a quarter of the run's, each under 8 kB."""
        limit = len(contexts) // GROUP_MIN
        by_context: dict[bytes, list[int]] = {}
        for i, context in enumerate(map(bytes, contexts)):
            found = by_context.get(context)
            if found is not None:
                found.append(i)
            elif len(by_context) < limit:
                by_context[context] = [i]
            else:
                return None
        groups: list[tuple[list[int], list[tuple[Destination, Route]]]] = []
        tables: set[TableKey] = set()
        for indices in by_context.values():
            try:
                dests = self._clean_routes(contexts[indices[0]])
            except PacketError:  # a context refused whole (not JSON, no destinations): its records fail one by one
                dests = None
            reached = {route[0] for _, route in dests} if dests is not None else tables
            if dests is None or not tables.isdisjoint(reached):
                self._skip_groups = RUN_SKIP  # (a stream that mixes so is not grouped twice over)
                return None
            tables |= reached
            groups.append((indices, dests))
        return groups

    def _clean_routes(self, view: msgspec.Raw) -> list[tuple[Destination, Route]] | None:
        """A context's routes when none fails and no two reach one table (rows of a table would interleave), else
        None: what a context's records need to be filed whole."""
        routes = self._routes_of(view)
        dests = [(dest, route) for dest, route in routes if not isinstance(route, Failure)]
        if len(dests) != len(routes) or len({route[0] for _, route in dests}) != len(dests):
            return None
        return dests

    def _routes_of(self, view: msgspec.Raw) -> tuple[tuple[Destination, Route | Failure], ...]:
        """The routes of a ``pipeline_context`` (a view): the last one's when the bytes are the same, else from the
        cache, else resolved."""
        last = self._last
        if last is not None and view == last[0]:  # a view equals a view of the same bytes
            return last[1]
        context = bytes(view)
        cached = self._routes.get(context)
        routes = self._resolve(context) if cached is None else cached
        if len(context) <= PacketDecoder.MAX_CACHED_VALUE:
            self._last = (msgspec.Raw(context), routes)  # its own bytes: never holds a whole packet
        return routes

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
        size = record_bytes(msg)
        if row.values is not None and value is not None:
            size += values_bytes(len(value), value.isascii(), len(row.keys))
        work.nbytes += size
        if size > LARGE_PACKET:
            work.large += size
        return True

    def _file(self, batch: Batch, works: dict[TableKey, TableWork], msg: Message) -> None:
        """File one pipeline record, just found one by :func:`is_pipeline_record` (whose headers said whether it
        is a copy for one destination: ``decoder.only``)."""
        only = self.decoder.only
        value = msg.value()
        try:
            # views into the value, not copies (PacketDecoder.split_raw): the row keeps its ``data`` as one
            # view, whose packet its record holds anyway
            view, doc = self.decoder.split_raw(value)
        except PacketError as exc:
            batch.errors.append(ErrorRecord(msg, exc.failure, None))
            return
        self._file_split(batch, works, msg, value, view, doc, only)  # type: ignore[arg-type]  # split refused None

    def _file_split(self, batch: Batch, works: dict[TableKey, TableWork], msg: Message, value: bytes,
                    view: msgspec.Raw, doc: msgspec.Raw, only: bytes | None = None) -> None:
        """File one record whose envelope is split: ``view`` its ``pipeline_context``, ``doc`` its ``data``;
        ``only``: the ``kapow-destination`` of a copy republished from an error topic, which goes there alone (to
        all its destinations when none is that one)."""
        try:
            routes = self._routes_of(view)
            if only is not None:
                routes = tuple(r for r in routes if destination_json(r[0]) == only) or routes
            keys = self.decoder.keys(doc)
            # the decoded values a COPY would send, kept with the row; not for a large packet, whose values would
            # hold as much memory again as its value does (the bound counts the value once)
            values = self.decoder.values if len(value) <= LARGE_PACKET else None
        except PacketError as exc:
            batch.errors.append(ErrorRecord(msg, exc.failure, None))
            return
        if keys is not self._names[0]:  # a row of the previous row's shape comes with the very same tuple
            self._names = (keys, self._keysets.intern(keys))
        keys = self._names[1]
        size = record_bytes(msg)
        if values is not None:
            size += values_bytes(len(doc), value.isascii(), len(keys))
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
        these bytes resolve to, cached by them (small contexts only; the router bounds its own cache too).

        Once a cache is full, a context is cached the second time it is met, not the first (:attr:`_seen`): a
        stream of ever-new ones (a table name per packet) evicted an entry from each of the three caches for every
        packet it added, ~15 us of the loop's time a packet of its own (a hostile run: 100,000 such packets stalled
        every tenant ~25 s), and pushed every other client's contexts out of them.
        """
        if self._routes.full(entry_cost(context)) or self.router.full() or self.decoder.full(context):
            digest = hash(context)
            seen = self._seen
            first, second = digest & (SEEN_SLOTS - 1), (digest >> 24) & (SEEN_SLOTS - 1)
            if seen[first] != digest and seen[second] != digest:  # met for the first time lately: not cached
                seen[first] = seen[second] = digest  # (two slots: two contexts in turn rarely take both each time)
                return tuple((dest, self.router.route(dest, cache=False))
                             for dest in self.decoder.destinations(context, cache=False))
        routes = tuple((dest, self.router.route(dest)) for dest in self.decoder.destinations(context))
        self._routes.put(context, routes)
        return routes


def _internal(batch: Batch, msg: Message, exc: Exception) -> None:
    """A bug met while one record was filed: that record fails alone, with a code, on the system-errors topic."""
    log.exception("unexpected error sorting %s[%s]@%s", msg.topic(), msg.partition(), msg.offset(), exc_info=exc)
    failure = Failure(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}"[:300], Scope.TABLE)
    batch.errors.append(ErrorRecord(msg, failure, None))


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
