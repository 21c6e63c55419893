"""The packet contract (PRODUCT.md §1): the ``context`` header and the JSON envelope.

Decoding is the hot path, so it is typed and done by msgspec in C. The ``data`` object is kept as the raw JSON
bytes the client sent (``msgspec.Raw``): they go to PostgreSQL as they are, so a number such as
``12345678901234567.89`` (or ``1e400`` for a ``numeric`` column) reaches PostgreSQL exactly, never through a
Python float. Only its keys are read here, for validation and for the column list of the INSERT.

Everything here is written for a hostile client: any input, however large, deep or strange, ends as a
:class:`~kapow.errors.PacketError` with a user error code, never as another exception (msgspec raises
``RecursionError`` on JSON nested about a thousand levels deep; that too is the client's problem).
"""

from __future__ import annotations

import hashlib
import operator
import re
import threading
from collections.abc import Sequence
from typing import Any, NamedTuple, TypeVar

import msgspec

from kapow.bytecache import ByteCache, entry_cost
from kapow.errors import ErrorCode, Failure, PacketError
from kapow.keyshapes import KeyShapes

CONTEXT_HEADER = "context"
# On an error record: the destination that failed (destination_json). On a copy republished from an error topic
# (redrive, reschedule), which also carries ORIGIN_HEADER: the one destination the copy is for; the packet's others
# took it already.
DESTINATION_HEADER = "kapow-destination"
ORIGIN_HEADER = "kapow-origin"  # a copy's: topic/partition/offset of the original record
CONTEXT_VALUE = b'{"consumer": {"type": "data_pipeline"}}'
PIPELINE_CONSUMER_TYPE = "data_pipeline"
SINK_TYPES = frozenset({"postgres"})
MODES = ("insert", "upsert", "delete")

# PostgreSQL identifiers we accept from packets: plain, unquoted-style names. Anything else (quotes, spaces,
# semicolons) is refused before it gets near SQL; accepted names are still always quoted when used.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
MAX_IDENTIFIER_BYTES = 63
# Schemas no client may write: the system catalogs, the TOAST store and other sessions' temporary schemas.
# As PostgreSQL names them: a destination's schema is quoted as given, so "PG_CATALOG" is a schema of its own
SYSTEM_SCHEMAS = re.compile(r"pg_catalog|information_schema|pg_toast.*|pg_temp.*")


class _Consumer(msgspec.Struct):
    type: str = ""


class _Context(msgspec.Struct):
    consumer: _Consumer = msgspec.field(default_factory=_Consumer)


class Metadata(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Columns to fill from the Kafka record itself (issue 11): each names the column that takes that field."""

    offset: str | None = None
    partition: str | None = None
    topic: str | None = None
    timestamp: str | None = None
    key: str | None = None

    def columns(self) -> tuple[tuple[str, str], ...]:
        """(field, column) pairs that are set, in a fixed order."""
        return tuple((f, c) for f in ("offset", "partition", "topic", "timestamp", "key")
                     if (c := getattr(self, f)) is not None)


class Destination(msgspec.Struct, frozen=True, forbid_unknown_fields=False, cache_hash=True):
    """Where a packet goes, and how (``mode``); hashable so that it can key caches and groups directly (the hash
    is computed once per object: statements are grouped by it row after row)."""

    vanity: str
    database: str
    table: str
    schema: str = "public"
    type: str = "postgres"
    mode: str = "insert"
    key: tuple[str, ...] | None = None  # the unique constraint to use when the table has several
    version: str | None = None  # a column that must not move backwards (upsert/delete apply only if >= stored)
    metadata: Metadata | None = None  # Kafka record fields (offset, partition, ...) -> the columns they fill

    @property
    def label(self) -> str:
        """``vanity/database/schema.table``: the one way a destination is written in logs, the CLI and the API."""
        return destination_label(self.vanity, self.database, self.schema, self.table)


class TableKey(NamedTuple):
    """One destination table: the unit that is written, held, ordered and cached."""

    vanity: str
    database: str
    schema: str
    table: str

    @property
    def label(self) -> str:
        return destination_label(self.vanity, self.database, self.schema, self.table)


class PipelineContext(msgspec.Struct):
    destinations: list[Destination]


class _Envelope(msgspec.Struct):
    # Both halves stay raw: ``data`` goes to PostgreSQL as the client wrote it, and ``pipeline_context`` repeats
    # from packet to packet, so its decoded destinations are cached by its bytes instead of rebuilt each time.
    pipeline_context: msgspec.Raw
    data: msgspec.Raw


class Packet(msgspec.Struct, gc=False):
    """A decoded packet: where it goes and its ``data`` exactly as the client sent it, with its keys."""

    destinations: tuple[Destination, ...]
    doc: bytes
    keys: tuple[str, ...]


T = TypeVar("T")
_context_decoder = msgspec.json.Decoder(_Context)
_envelope_decoder = msgspec.json.Decoder(_Envelope)
_pipeline_context_decoder = msgspec.json.Decoder(PipelineContext)
_keys_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])
# One level of scalars, the shape of nearly every row: decoding it whole checks its UTF-8 and bounds its depth
# in the same pass, where the Raw decoder skips the values and leaves both to two more passes over the bytes.
_flat_decoder = msgspec.json.Decoder(dict[str, str | int | float | bool | None])
_any_decoder = msgspec.json.Decoder(float_hook=lambda _text: None)  # depth only: no float may overflow
_context_half = operator.attrgetter("pipeline_context")
_data_half = operator.attrgetter("data")


def copy_destination(headers: list[tuple[str, bytes | None]]) -> bytes | None:
    """The ``kapow-destination`` of a copy (a record with ``kapow-origin`` too), else None."""
    only = next((v for name, v in headers if name == DESTINATION_HEADER and v is not None), None)
    if only is None or not any(name == ORIGIN_HEADER for name, _ in headers):
        return None
    return only


class PacketDecoder:
    """Decodes headers and envelopes for one consumer loop, with small caches of what repeats.

    Header values and ``pipeline_context`` objects repeat from packet to packet, so their decoded forms are
    cached by their bytes. The caches belong to this object (one per loop, used by one thread) and are bounded in
    bytes (:class:`kapow.bytecache.ByteCache`): only small values are cached and the oldest entries make room, so
    a hostile stream of ever-new, megabyte-sized contexts costs CPU, never memory, while the contexts of ten
    thousand tables all stay cached.
    """

    MAX_CACHED_VALUE = 2048  # bytes: a real pipeline_context is ~150 bytes
    CACHE_BYTES = 32 * 1024 * 1024  # per cache, as counted by ByteCache: ~19,000 contexts of 150 bytes

    def __init__(self, *, max_bytes: int, max_depth: int, max_destinations: int) -> None:
        self.max_bytes = max_bytes
        self.max_depth = max_depth
        self.max_destinations = max_destinations
        self._contexts: ByteCache[bool] = ByteCache(max_bytes=self.CACHE_BYTES, max_key_bytes=self.MAX_CACHED_VALUE)
        # a context refused is cached as its Failure, never as the exception: an exception raised again keeps
        # every frame it passes through (and their records) in its traceback, one chain more per packet
        self._destinations: ByteCache[tuple[Destination, ...] | Failure] = ByteCache(
            max_bytes=self.CACHE_BYTES, max_key_bytes=self.MAX_CACHED_VALUE)
        self._skip_flat = 0  # packets left before the flat reading is tried again (see keys)
        self._shapes = KeyShapes()
        # the last row's values when its shape read it (a Struct, in the order of the names keys() returned), else
        # None: what a COPY sends for it (kapow.postgres.writer); read right after keys(), by the same thread
        self.values: Any = None
        # the last small header value and its verdict: consecutive records nearly always carry the same bytes, and
        # comparing them costs less than hashing them for the cache
        self._last_context: bytes | None = None
        self.only: bytes | None = None  # the last is_pipeline_packet's kapow-destination header, if any
        self._last_verdict = False

    def is_pipeline_packet(self, headers: list[tuple[str, bytes | None]] | None) -> bool:
        """True when the record carries the ``context`` header naming the data pipeline.

        A header that is not the expected JSON (garbage, or nested a thousand levels deep) makes the record
        foreign traffic: it is filtered, never a crash. Sets :attr:`only`: the ``kapow-destination`` header's
        value, when the record has one (a copy republished from an error topic is for that destination alone).
        """
        if not headers:
            self.only = None
            return False
        # a republished copy names the one destination it is for (it has more headers than a client's packet); a
        # kapow-destination without kapow-origin is not a copy's, and is ignored (a helper's run: a client's own
        # header made its packet skip its other destinations)
        self.only = None if len(headers) < 3 else copy_destination(headers)
        for name, value in headers:
            if name != CONTEXT_HEADER or value is None:
                continue
            if value == self._last_context:
                verdict: bool | None = self._last_verdict
            else:
                verdict = self._contexts.get(value)
                if verdict is None:
                    try:
                        verdict = _context_decoder.decode(value).consumer.type == PIPELINE_CONSUMER_TYPE
                    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
                        verdict = False
                    self._contexts.put(value, verdict)
                if len(value) <= self.MAX_CACHED_VALUE:
                    self._last_context, self._last_verdict = value, verdict
            if verdict:
                return True
        return False

    def decode(self, value: bytes | None) -> Packet:
        """Decode a packet's value; raise :class:`PacketError` with a user error code for anything wrong."""
        context, doc = self.split(value)
        destinations = self.destinations(context)
        return Packet(destinations, doc, self.keys(doc))

    FLAT_RETRY = 256  # after a document that is not flat, packets read the general way before trying again

    def keys(self, doc: bytes) -> tuple[str, ...]:
        """:func:`decode_keys`, with a fast path for flat documents (one level of scalars).

        The flat decoder reads the values instead of skipping them, which checks their UTF-8 and the depth in one
        pass (0.47 µs for a 250 B row against 0.9 µs). A document it refuses (nested values, a float out of range,
        bad input) is read by :func:`decode_keys`, which gives the same keys or the same error; since a refusal
        costs as much as a reading (0.53 µs), a stream of nested documents tries the flat way once per
        :data:`FLAT_RETRY` packets only. Before either, a row with exactly the previous rows' names is read by a
        decoder made for them (:mod:`kapow.keyshapes`), which returns their one tuple.
        """
        shapes = self._shapes
        known = shapes.guess(doc)  # the previous rows' names, when this row has exactly those
        if known is not None:
            self.values = shapes.values
            return known
        self.values = None
        if self._skip_flat:
            self._skip_flat -= 1
        else:
            try:
                keys = tuple(_flat_decoder.decode(doc))
            except (msgspec.DecodeError, UnicodeDecodeError):  # ValidationError is a DecodeError
                self._skip_flat = self.FLAT_RETRY
            else:
                if keys:
                    self._shapes.learn(keys)
                    return keys
        return decode_keys(as_bytes(doc), max_depth=self.max_depth)

    def keys_all(self, docs: Sequence[bytes]) -> tuple[tuple[str, ...], list[Any]] | None:
        """:meth:`keys` for a run of rows that all have the previous rows' names, read in C: those names and each
        row's values (what :attr:`values` holds after :meth:`keys`); None when any row has others, or none is
        known yet (then read them one by one)."""
        return self._shapes.guess_all(docs)

    def keys_by_first(self, docs: Sequence[bytes], *, tried: bool = False) -> tuple[tuple[str, ...], list[Any]] | None:
        """:meth:`keys_all` by the shape of the first row's names, not the previous rows' (built when those names
        repeat: :meth:`kapow.keyshapes.KeyShapes.read_all`): what reads a run of another table's names whole.
        ``tried``: :meth:`keys_all` of these very rows just failed."""
        return self._shapes.read_all(docs, tried=tried)

    @property
    def shape_pending(self) -> bool:
        """Whether the last :meth:`keys_by_first` read nothing only because its names' shape is not built yet:
        names met for the first time (a shape is built when they come again), or no build in hand."""
        return self._shapes.pending

    def split_all(self, values: list[bytes]) -> tuple[list[msgspec.Raw], list[msgspec.Raw]] | None:
        """:meth:`split_raw` for a run of values none of which is None or over ``max_bytes``, in C: their
        ``pipeline_context`` halves and their ``data`` halves, or None when any of them is not an envelope (then
        split them one by one: each bad one fails alone, with its own message)."""
        try:
            envelopes = list(map(_envelope_decoder.decode, values))
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            return None
        return list(map(_context_half, envelopes)), list(map(_data_half, envelopes))

    def split(self, value: bytes | None) -> tuple[bytes, bytes]:
        """The envelope's two halves, raw: (``pipeline_context`` JSON, ``data`` JSON); nothing decoded inside."""
        context, doc = self.split_raw(value)
        return bytes(context), bytes(doc)

    def split_raw(self, value: bytes | None) -> tuple[msgspec.Raw, msgspec.Raw]:
        """:meth:`split` without the copies: two views into ``value`` (each holds it, as the record does anyway).

        What the hot loop uses: copying the halves into ``bytes`` cost 0.37 µs each (the ``bytes()`` call, not
        the memcpy), more than the decode that found them. A view takes ``len``, ``==`` with another view, the
        buffer protocol (decoders, ``bytes.join``) and ``bytes()``; nothing else (:func:`as_bytes`).
        """
        if not value:  # None or empty: "Input data was truncated" said nothing useful of an empty value
            raise PacketError(ErrorCode.NOT_JSON, "packet has no value" if value is None else "packet's value is empty")
        if len(value) > self.max_bytes:
            raise PacketError(ErrorCode.TOO_LARGE, f"packet is {len(value)} bytes, the limit is {self.max_bytes}")
        try:
            envelope = _envelope_decoder.decode(value)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            envelope = _decode(_envelope_decoder, value, "packet")  # fails again, with the user's message
        return envelope.pipeline_context, envelope.data

    def full(self, context: bytes) -> bool:
        """Whether caching ``context``'s destinations would evict another now."""
        return self._destinations.full(entry_cost(context))

    def destinations(self, context: bytes, *, cache: bool = True) -> tuple[Destination, ...]:
        """The destinations of a ``pipeline_context`` (cached by its bytes when small, unless not ``cache``)."""
        return self._decode_destinations(context, cache)

    def _decode_destinations(self, context: bytes, cache: bool = True) -> tuple[Destination, ...]:
        cached = self._destinations.get(context)
        if cached is None:
            try:
                cached = self._parse_destinations(context)
            except PacketError as exc:
                cached = exc.failure
            if cache:
                self._destinations.put(context, cached)
        if isinstance(cached, Failure):
            raise PacketError(cached.code, cached.message)  # a new one each time (see __init__)
        return cached

    def _parse_destinations(self, context: bytes) -> tuple[Destination, ...]:
        destinations = tuple(_decode(_pipeline_context_decoder, context, "pipeline_context").destinations)
        if not destinations:
            raise PacketError(ErrorCode.BAD_PACKET, "pipeline_context.destinations is empty")
        if len(destinations) > self.max_destinations:
            raise PacketError(ErrorCode.TOO_MANY_DESTINATIONS,
                              f"{len(destinations)} destinations, the limit is {self.max_destinations}")
        return destinations


def _decode(decoder: msgspec.json.Decoder[T], raw: bytes, what: str) -> T:
    """Decode with one of the typed decoders; whatever the input, the only exception is a user PacketError."""
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        try:  # a shape refused at its first byte may not be JSON at all ("[1,2" is a cut array, not an array)
            msgspec.json.decode(raw)
        except (msgspec.DecodeError, UnicodeDecodeError) as bad:
            raise PacketError(ErrorCode.NOT_JSON, f"value is not UTF-8 JSON: {describe(bad, raw)}") from None
        except RecursionError:  # nested past any depth: an array or object that does not end as one is cut
            if not raw.rstrip().endswith((b"]", b"}")):
                raise PacketError(ErrorCode.NOT_JSON, "value is not UTF-8 JSON: Input data was truncated") from None
        prefix = "" if what == "packet" else f"{what}."
        raise PacketError(ErrorCode.BAD_PACKET, f"bad packet shape: {prefix}{describe(exc)}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise PacketError(ErrorCode.NOT_JSON, f"value is not UTF-8 JSON: {describe(exc, raw)}") from None
    except RecursionError:
        raise PacketError(ErrorCode.BAD_PACKET, f"{what} is nested too deeply") from None


def as_bytes(doc: bytes) -> bytes:
    """``doc`` as real ``bytes``: a :class:`msgspec.Raw` view (:meth:`PacketDecoder.split_raw`) copied, since it
    cannot be sliced, searched or decoded as text. (msgspec types ``Raw`` as a ``bytes`` subclass, so mypy cannot
    tell the two apart: every such use of a row's document goes through here.)"""
    return doc if type(doc) is bytes else bytes(doc)


INTERNED_NAMES_BYTES = 4096  # a set of column names longer than this in all is never interned


class KeySets:
    """One shared tuple per set of column names (the lanes look shapes up by identity).

    Bounded in count, in each set's names and in bytes in all: a hostile stream of ever-new, huge sets of names
    (20,000 columns in a packet under 1 MB) is not interned, so it costs speed, never memory (1.9 MB kept per such
    set otherwise); nor are sets once ``max_bytes`` are held (a review: 4,096 sets of 4 kB of one-letter names
    pinned 176 MB for good, counted by number alone). Safe for several threads: a route's change decoder is shared
    by its lane's workers.
    """

    def __init__(self, *, max_sets: int, max_bytes: int = 8 * 1024 * 1024) -> None:
        self.max_sets = max_sets
        self.max_bytes = max_bytes
        self._sets: dict[tuple[str, ...], tuple[str, ...]] = {}
        self.bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sets)

    def intern(self, keys: tuple[str, ...]) -> tuple[str, ...]:
        interned = self._sets.get(keys)
        if interned is not None:
            return interned
        if len(self._sets) >= self.max_sets or sum(map(len, keys)) > INTERNED_NAMES_BYTES:
            return keys
        # the tuple and its strings (49 bytes a str header; four bytes a character when not ASCII)
        cost = 56 + 8 * len(keys) + sum(49 + (len(k) if k.isascii() else 4 * len(k)) for k in keys)
        with self._lock:
            interned = self._sets.get(keys)
            if interned is not None:
                return interned
            if self.bytes + cost > self.max_bytes:
                return keys
            self._sets[keys] = keys
            self.bytes += cost
            return keys


def decode_keys(doc: bytes, *, max_depth: int) -> tuple[str, ...]:
    """The column names of ``data`` (a non-empty JSON object), after bounding its nesting depth."""
    try:
        keys = tuple(_keys_decoder.decode(doc))
    except msgspec.ValidationError:
        raise PacketError(ErrorCode.BAD_PACKET, "data must be a JSON object of column -> value") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # e.g. invalid UTF-8 inside the raw data
        raise PacketError(ErrorCode.NOT_JSON, f"data is not JSON: {describe(exc, doc)}") from None
    except RecursionError:
        raise PacketError(ErrorCode.BAD_PACKET, f"data is nested deeper than {max_depth} levels") from None
    if not keys:
        raise PacketError(ErrorCode.BAD_PACKET, "data is empty: give at least one column")
    if not doc.isascii():  # the values were skipped, not read: their UTF-8 is checked here, in C
        try:
            doc.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PacketError(ErrorCode.NOT_JSON, f"data is not UTF-8 (byte {exc.start})") from None
    # Depth can only exceed the limit if there are more openers than the limit: counting bytes in C spares
    # the walk for the (nearly all) packets whose values are flat.
    if doc.count(b"[") + doc.count(b"{") > max_depth:
        try:
            deep = _depth(_any_decoder.decode(doc), max_depth + 1) > max_depth + 1
        except (msgspec.DecodeError, RecursionError):
            deep = True
        if deep:
            raise PacketError(ErrorCode.BAD_PACKET, f"data is nested deeper than {max_depth} levels")
    return keys


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a JSON value, stopping early once past ``limit``."""
    depth = 0
    level: list[Any] = [value]
    while level and depth <= limit:
        depth += 1
        nxt: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                nxt.extend(v for v in item.values() if isinstance(v, dict | list))
            elif isinstance(item, list):
                nxt.extend(v for v in item if isinstance(v, dict | list))
        level = nxt
    return depth


def shorten(text: str, limit: int = 80) -> str:
    """A client-given name cut for a message: an error line never echoes a megabyte back."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_identifier(kind: str, name: str, code: ErrorCode = ErrorCode.UNKNOWN_TABLE) -> None:
    """Refuse any name that is not a plain identifier; it is never spliced into SQL either way."""
    if not _IDENTIFIER.fullmatch(name) or len(name.encode()) > MAX_IDENTIFIER_BYTES:
        raise PacketError(code, f"invalid {kind} name {shorten(name)!r}: use ASCII letters, digits, _ and $ (not"
                                f" first), at most {MAX_IDENTIFIER_BYTES} bytes")


# A \u escape of a high surrogate not followed by the escape of a low one: msgspec says "Input data was
# truncated" for it, or "unexpected end of hex escape" when a `\` comes next (the next string's quote
# escaped, say), which sends a client looking for a cut packet. Searched only once a decode has failed.
_LONE_SURROGATE = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})")


def describe(exc: Exception, doc: bytes | None = None) -> str:
    """msgspec's message for a decode error, for a client; ``doc``: what failed, to name a lone surrogate."""
    text = str(exc)
    if doc is not None and ("truncated" in text or "hex escape" in text):
        found = _LONE_SURROGATE.search(as_bytes(doc))
        if found is not None:
            return (f"invalid string escape {found.group().decode()} at byte {found.start()}: a UTF-16 high"
                    " surrogate without its low one (not a character)")
    return shorten(text.replace("`", "").replace("$.", "").replace(" - at $", ""), 200)


def make_packet(destinations: list[dict[str, Any]], data: Any) -> bytes:
    """Encode a packet value from destinations and data (used by ``kapow send`` and :mod:`kapow.client`)."""
    return msgspec.json.encode({"pipeline_context": {"destinations": destinations}, "data": data})


def destination_label(vanity: str, database: str, schema: str, table: str) -> str:
    """The destination label (see :attr:`Destination.label`); pasteable into ``kapow dlq --destination``."""
    return f"{vanity}/{database}/{schema}.{table}"


HEADER_NAME_LIMIT = 256  # characters of each name an error record's kapow-destination keeps (shorten)


def destination_json(dest: Destination, *, limit: int = HEADER_NAME_LIMIT) -> bytes:
    """One destination as JSON, for the ``kapow-destination`` error header; each name is cut to ``limit``.

    A destination with a ``key``, ``version`` or ``metadata`` also gets ``variant``, a short digest of all of
    it: a packet may name one table twice (an upsert, and the same with metadata), and the copy republished for
    one of them must land there alone (kapow.pipeline.sort), which the names and mode cannot tell apart. The
    digest keeps the header small whatever the client's key lists hold."""
    out: dict[str, Any] = {"type": shorten(dest.type, limit), "vanity": shorten(dest.vanity, limit),
                           "database": shorten(dest.database, limit), "schema": shorten(dest.schema, limit),
                           "table": shorten(dest.table, limit)}
    if dest.mode != "insert":
        out["mode"] = shorten(dest.mode, limit)
    if dest.key is not None or dest.version is not None or dest.metadata is not None:
        out["variant"] = hashlib.blake2b(msgspec.json.encode(dest), digest_size=8).hexdigest()
    return msgspec.json.encode(out)
