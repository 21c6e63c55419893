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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

MAX_SHAPES = 64  # decoders kept; the oldest goes first
MAX_COLUMNS = 64  # names beyond this are read the general way (a wide decoder costs more to build than it saves)
MAX_NAME_BYTES = 4096  # the names of one shape, in all
BUILD_EVERY = 4096  # rows read between two builds, at least
WINDOW = 64  # more than MISSES misses before WINDOW right guesses stop the guessing for PAUSE rows
MISSES = 8
PAUSE = 256

# No float: msgspec would read 1.10 as 1.1, and the decoded values are what a COPY sends (kapow.postgres.writer);
# a row with a JSON float is read the general way, and its exact text goes to PostgreSQL in the JSON statement.
_Scalar = str | int | bool | None


class KeyShapes:
    """Guesses a row's column names from the last shape; :meth:`guess` then :meth:`learn` (see the module)."""

    def __init__(self) -> None:
        self._shapes: dict[tuple[str, ...], msgspec.json.Decoder[Any]] = {}
        self._current: tuple[tuple[str, ...], msgspec.json.Decoder[Any]] | None = None
        self._previous: tuple[str, ...] | None = None  # the names of the last row read the general way
        self._since_build = BUILD_EVERY  # the first shape is built at once
        self.values: Any = None  # the last row guessed right, decoded: a Struct of its values in the shape's order
        self._hits = 0  # guesses right since the window of misses began
        self._misses = 0
        self._pause = 0

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
        self._since_build = 0
        fields = [(f"f{i}", _Scalar) for i in range(len(keys))]
        try:
            struct = msgspec.defstruct("Shape", fields, rename={f"f{i}": k for i, k in enumerate(keys)},
                                       forbid_unknown_fields=True, gc=False)
        except (ValueError, TypeError):
            return None
        if len(self._shapes) >= MAX_SHAPES:
            del self._shapes[next(iter(self._shapes))]
        decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(struct)
        self._shapes[keys] = decoder
        return decoder
