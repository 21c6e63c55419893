"""The column names of a flat row, read by a decoder made for the names the previous rows had.

A stream's rows nearly always repeat one set of column names. Decoding a row into a ``dict`` builds a string and
a dict entry per column only to learn names the previous row already had; decoding it into a msgspec Struct of
those names (every field required, no other field allowed, each value a JSON scalar) builds neither, and a
successful decode proves the row has exactly those names, each a scalar (no float: see :data:`_Scalar`), its
strings valid UTF-8: 0.4 µs a 250 B row against 0.95 µs for the ``dict``. The decoded values are kept
(:attr:`KeyShapes.values`): a COPY of the row's table sends them instead of its JSON (kapow.postgres.writer).
The names come back as the shape's one tuple, in the order the shape was first seen (a row giving the same
names in another order is the same row to every statement).

A wrong guess costs a failed decode (1.2 µs: msgspec builds an exception), so guessing stops for a while when
misses pile up (rows of many shapes interleaved); and a decoder costs 0.13-0.7 ms to build, so names are built
into one only after two rows in a row gave them, at most once per :data:`BUILD_EVERY` rows read the general way,
and only for :data:`MAX_COLUMNS` columns or fewer: a hostile stream of ever-new names costs little CPU and no
memory beyond :data:`MAX_SHAPES` decoders. One instance per consumer loop, used by one thread.

Traffic spread over tables of different column names (a company's, not a benchmark's) interleaves its shapes in
every run, so one current shape reads none of it whole. :meth:`KeyShapes.read_all` reads a run (or one context's
records of it) by the shape of its first row's names instead, built when those names come again and a budget of
builds allows (:data:`ROWS_PER_BUILD`): a hundred tables' shapes are built in their first few runs, not one per
:data:`BUILD_EVERY` rows, and a stream of ever-new names still builds nothing, since names met once are only
remembered. The shapes kept are bounded in count and bytes (:func:`shape_bytes`), and dropped ones are collected.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from typing import Any

import msgspec

MAX_SHAPES = 256  # decoders kept (~6 kB each for 8 columns); the oldest goes first
MAX_SHAPE_BYTES = 4 * 1024 * 1024  # ... and at most this much of them (shape_bytes): wide shapes make room sooner
MAX_COLUMNS = 64  # names beyond this are read the general way (a wide decoder costs more to build than it saves)
MAX_NAME_BYTES = 4096  # the names of one shape, in all (characters, as len counts them)
BUILD_EVERY = 4096  # rows read between two builds, at least
WINDOW = 64  # more than MISSES misses before WINDOW right guesses stop the guessing for PAUSE rows
MISSES = 8
PAUSE = 256
# read_all: a shape is built for a run's names only when they were seen before (CANDIDATES names seen once are
# remembered) and the budget has a build in hand: one is earned per ROWS_PER_BUILD rows read_all is asked about,
# BUILD_CREDIT at most (and at the start), so builds (0.13-0.7 ms each) cost at most ~2.7 µs a row however the
# names are made, and a hundred tables' shapes are built in about their second run each
# each at most MAX_COLUMNS names of MAX_NAME_BYTES characters in all: 4.0 MB measured for ASCII names, 7.7 MB for
# names of 4-byte characters (a helper's review), 8.0 MB for ASCII at 1,024
CANDIDATES = 512
ROWS_PER_BUILD = 256
BUILD_CREDIT = 16.0
BUILD_UNIT_BYTES = 16 * 1024  # a build costs one credit per this much of its shape_bytes, at least one

# No float: msgspec would read 1.10 as 1.1, and the decoded values are what a COPY sends (kapow.postgres.writer);
# a row with a JSON float is read the general way, and its exact text goes to PostgreSQL in the JSON statement.
_Scalar = str | int | bool | None
_names_decoder = msgspec.json.Decoder(dict[str, _Scalar])  # a flat row's names (and no float), for read_all


class KeyShapes:
    """Guesses a row's column names from the last shape; :meth:`guess` then :meth:`learn` (see the module)."""

    def __init__(self) -> None:
        self._shapes: dict[tuple[str, ...], msgspec.json.Decoder[Any]] = {}
        self._bytes = 0  # shape_bytes of the shapes kept
        self._dropped = 0  # ... and of those dropped since the last collection
        self._current: tuple[tuple[str, ...], msgspec.json.Decoder[Any]] | None = None
        self._previous: tuple[str, ...] | None = None  # the names of the last row read the general way
        self._since_build = BUILD_EVERY  # the first shape is built at once
        self.values: Any = None  # the last row guessed right, decoded: a Struct of its values in the shape's order
        self._hits = 0  # guesses right since the window of misses began
        self._misses = 0
        self._pause = 0
        self._credit = BUILD_CREDIT  # builds read_all may make now (see ROWS_PER_BUILD)
        # the last read_all read nothing only because its names' shape is not built yet (it may be later)
        self.pending = False
        self._seen: dict[tuple[str, ...], None] = {}  # names read_all met once, not built (oldest first)

    def guess(self, doc: bytes) -> tuple[str, ...] | None:
        """The row's names if it has exactly the current shape's (each value a JSON scalar), else None."""
        current = self._current
        if current is None:
            if self._pause:
                self._pause -= 1
            return None
        try:
            self.values = current[1].decode(doc)
        except (msgspec.DecodeError, UnicodeDecodeError):  # ValidationError is a DecodeError
            self._miss()
            return None
        self._hits += 1  # the hot path: one decode, one count
        return current[0]

    def guess_all(self, docs: Sequence[bytes]) -> tuple[tuple[str, ...], list[Any]] | None:
        """:meth:`guess` for a run of rows at once, in C (``map``): the current shape's names and each row's
        values when every row has exactly them, else None (nothing is counted: the rows are then read one by one,
        and each is guessed again, its miss counted there)."""
        current = self._current
        if current is None:
            return None
        try:
            values = list(map(current[1].decode, docs))
        except (msgspec.DecodeError, UnicodeDecodeError):
            return None
        self._hits += len(values)
        return current[0], values

    def read_all(self, docs: Sequence[bytes], *, tried: bool = False) -> tuple[tuple[str, ...], list[Any]] | None:
        """:meth:`guess_all` by the shape of the first row's names rather than the current one: those names and
        each row's values when every row has exactly them, else None. The shape is built when the names were met
        here before and the budget allows; it is then made current. Nothing is counted as a hit or a miss.
        :attr:`pending` tells whether None came only from a shape not built yet. ``tried``: :meth:`guess_all` of
        these very rows just failed, so the current shape is not tried again."""
        self.pending = False
        if not docs:
            return None
        self._credit = min(BUILD_CREDIT, self._credit + len(docs) / ROWS_PER_BUILD)
        try:
            names = tuple(_names_decoder.decode(docs[0]))
        except (msgspec.DecodeError, UnicodeDecodeError):  # not a flat object of scalars: read one by one
            return None
        current = self._current
        if current is not None and current[0] == names:
            if tried:  # the first row has the current names, and guess_all found another row that has not
                return None
            keys, decoder = current
        else:
            keys, found = names, self._shapes.get(names)
            if found is None:
                if not self._may_build(names):
                    return None
                self.pending = False  # built now, or never (names a Struct cannot have)
                found = self._build(names)
                if found is None:
                    return None
                self._credit -= max(1.0, shape_bytes(names) / BUILD_UNIT_BYTES)  # a wide shape costs more
            decoder = found
        try:
            values = list(map(decoder.decode, docs))
        except (msgspec.DecodeError, UnicodeDecodeError):
            return None
        self._current = (keys, decoder)
        return keys, values

    def _may_build(self, names: tuple[str, ...]) -> bool:
        """Whether read_all may build a shape for ``names`` now: they are not too many or too long, they were met
        before (else they are remembered, the oldest such names forgotten first), and a build is in hand."""
        if not names or len(names) > MAX_COLUMNS or sum(map(len, names)) > MAX_NAME_BYTES:
            return False
        self.pending = True  # names that may be built later: met for the first time, or no build in hand
        if self._credit < 1:
            return False
        if names in self._seen:
            del self._seen[names]
            return True
        if len(self._seen) >= CANDIDATES:
            del self._seen[next(iter(self._seen))]
        self._seen[names] = None
        return False

    def learn(self, keys: tuple[str, ...]) -> None:
        """A flat row's names, read the general way: make its shape current (building it when it repeats)."""
        self._since_build += 1
        if self._pause:
            return
        found = self._shapes.get(keys)
        if found is None:
            if keys != self._previous:
                self._previous = keys
                return
            if (self._since_build < BUILD_EVERY or len(keys) > MAX_COLUMNS
                    or sum(map(len, keys)) > MAX_NAME_BYTES):
                return
            self._since_build = 0
            found = self._build(keys)
            if found is None:
                return
        self._current = (keys, found)

    def _miss(self) -> None:
        if self._hits >= WINDOW:  # a long run of hits since the last window began: a new window
            self._hits = self._misses = 0
        self._misses += 1
        if self._misses > MISSES:  # rows of several shapes interleave: read them the general way for a while
            self._current = None
            self._pause = PAUSE
            self._hits = self._misses = 0

    def _build(self, keys: tuple[str, ...]) -> msgspec.json.Decoder[Any] | None:
        """A decoder for ``keys``, or None for names a Struct cannot have (a quote, a backslash, a control
        character: such rows are read the general way)."""
        fields = [(f"f{i}", _Scalar) for i in range(len(keys))]
        try:
            struct = msgspec.defstruct("Shape", fields, rename={f"f{i}": k for i, k in enumerate(keys)},
                                       forbid_unknown_fields=True, gc=False)
        except (ValueError, TypeError):
            return None
        cost = shape_bytes(keys)
        while self._shapes and (len(self._shapes) >= MAX_SHAPES or self._bytes + cost > MAX_SHAPE_BYTES):
            oldest = next(iter(self._shapes))
            del self._shapes[oldest]
            self._bytes -= shape_bytes(oldest)
            self._dropped += shape_bytes(oldest)
        if self._dropped > MAX_SHAPE_BYTES:
            # A Struct type is freed only by the cyclic collector (a class refers to itself), which the writer
            # runs rarely (kapow.pipeline.process.tune_gc): without this, dropped shapes would pile up
            self._dropped = 0
            gc.collect()
        decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(struct)
        self._shapes[keys] = decoder
        self._bytes += cost
        return decoder


def shape_bytes(keys: tuple[str, ...]) -> int:
    """What a built shape holds, over-counted (its Struct type, its decoder, its names): 6 kB measured for 8
    columns of short names, 72 kB for 64 of 63 characters."""
    return 1024 * (len(keys) + 1) + 8 * sum(map(len, keys))
