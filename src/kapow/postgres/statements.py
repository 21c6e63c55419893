"""Turn the rows bound for one table into as few statements as keep their meaning, and write those statements.

Every statement takes its rows as ONE parameter, a JSON array of the clients' own ``data`` objects, and lets
PostgreSQL type them: ``json_populate_recordset(NULL::tbl, $1::json)`` casts each value with the column's own
input function, in C. So Python never touches a value, a number like ``1e400`` reaches a ``numeric`` column
exactly, and one statement lands thousands of rows. Rows giving the same columns share a statement (the columns
they do not give take their defaults).

Inserts are the common case and need no planning beyond that. Upserts and deletes must take effect in offset
order, even inside one batch, and PostgreSQL refuses to touch one row twice in one statement, so the operations
on each key are split into *rounds* applied one after the other: round 1 holds every key's first operation,
round 2 its second, and so on (only a repeated delete is folded away: :func:`_fold`). A replay of the same
packets therefore converges to the same final table. Upserts of one shape alone are folded by PostgreSQL
(:func:`plan_last_wins`); a table of more than one unique key is written in offset order (:func:`_plan_in_order`).

Names reach SQL only as :class:`psycopg.sql.Identifier`; the SQL text of each shape is cached on the table's
catalog entry, so it is bounded and dies with it.
"""

from __future__ import annotations

import math
import operator
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from itertools import repeat
from typing import Any, Protocol

import msgspec
from psycopg import sql

from kapow.contract import Destination, as_bytes, shorten
from kapow.postgres.catalog import Table

INSERT, UPSERT, DELETE = "insert", "upsert", "delete"
LAST_WINS = "upsert-last"  # the SQL of plan_last_wins
ORDINALITY = "ordinality"  # plan_last_wins' array position (a table with such a column folds in Python)
_lines_encoder = msgspec.json.Encoder()
_copy_row_decoder = msgspec.json.Decoder(dict[str, str | int | bool | None])  # what kapow.keyshapes decodes
_NEGATIVE_ZERO = re.compile(rb":\s*-0\s*[,}]")  # a value -0 in a flat document (or in a string: no matter)


# A row without decoded values (read before its shape was known) is decoded for a COPY only when it is small: the
# sort keeps none for a packet over 64 kB on purpose (memory), and decoding them here would build them anyway.
COPY_DECODE_MAX_BYTES = 64 * 1024


def _copy_values(doc: bytes, columns: tuple[str, ...]) -> tuple[Any, ...] | None:
    """A row's values in the order of ``columns``, or None when it cannot be COPYed (too large, a float, nested)."""
    if len(doc) > COPY_DECODE_MAX_BYTES:
        return None
    try:
        row = _copy_row_decoder.decode(doc)
        return tuple(row[c] for c in columns)
    except (msgspec.DecodeError, UnicodeDecodeError, KeyError):
        return None


class RowLike(Protocol):
    """What a statement needs of a row: the JSON object the client sent, its column names, its destination."""

    @property
    def doc(self) -> bytes: ...

    @property
    def keys(self) -> tuple[str, ...]: ...

    @property
    def dest(self) -> Destination: ...

    @property
    def values(self) -> Any: ...  # a Struct of its values in the order of ``keys``, or None (see Element)


class RowIn(msgspec.Struct, gc=False):
    """A row made here (metadata columns added, a change event decoded): a :class:`RowLike`."""

    doc: bytes
    keys: tuple[str, ...]
    dest: Destination
    values: Any = None


class Element(msgspec.Struct, gc=False):
    """One element of a statement's JSON array; ``sources`` are the rows it stands for (several when folded).

    A msgspec Struct, not a dataclass: one is made per row, and its ``__init__`` cost a third as much.
    """

    doc: bytes
    sources: list[int]
    values: Any = None  # inserts: the row's decoded values (kapow.keyshapes), what a COPY sends; else None


@dataclass(slots=True)
class Statement:
    kind: str
    columns: tuple[str, ...]
    dest: Destination  # its options (key, version) shape the SQL
    text: str
    elements: list[Element] = field(default_factory=list)
    plain: str | None = None  # inserts: the same without ON CONFLICT, tried first (kapow.postgres.writer)
    lands_all: bool = False  # each key's last row is kept by PostgreSQL: every element lands (plan_last_wins)
    nulls_ok: bool = False  # an insert's null unique key is let through (allow_no_unique_key): see null_guard

    def payload(self, lo: int = 0, hi: int | None = None) -> str:
        docs = [e.doc for e in self.elements[lo:hi]]
        return (b"[" + b",".join(docs) + b"]").decode()  # valid UTF-8: kapow.contract checked every doc

    @property
    def sources(self) -> int:
        return sum(len(e.sources) for e in self.elements)

    def copy_payload(self) -> bytes | None:
        """The elements as ``COPY … (FORMAT csv, NULL 'null')`` text, or None when they cannot all be.

        Each element's decoded values (JSON scalars: strings, integers, booleans, nulls) are encoded by msgspec,
        in C, one JSON array per line; with no backslash in the whole (no escaped quote, control character or
        backslash in any string) a JSON array line is a CSV line once its brackets go: strings quoted, numbers and
        ``true``/``false`` bare, ``null`` the NULL marker (a quoted "null" stays a string). PostgreSQL then reads
        each value with its column's input function, exactly as ``json_populate_recordset`` does with the JSON,
        at about 60 % of the server's CPU (docs/BENCHMARKS.md). 0.5 µs a 250 B row in the writer.
        """
        if self.kind != INSERT:
            return None
        values = [e.values for e in self.elements]
        if None in values:  # rows read before their shape was known: decoded here (floats and nesting refused)
            rows = []
            for v, e in zip(values, self.elements, strict=True):
                decoded = msgspec.structs.astuple(v) if v is not None else _copy_values(e.doc, self.columns)
                if decoded is None:
                    return None
                rows.append(decoded)
        else:
            rows = list(map(msgspec.structs.astuple, values))
        text = _lines_encoder.encode_lines(rows)
        if b"\\" in text or not text:
            return None
        # An integer 0 among the values (False == 0 too: no matter) is looked for in the values, in C: 1 ms for
        # 10,000 rows of 250 B, where the regex [\[,]0[,\]] over their text took 5.3 (a pattern that starts with
        # a class is tried at every byte) and substring searches 2.7.
        if any(map(operator.contains, rows, repeat(0))) and _NEGATIVE_ZERO.search(b"".join(self._docs())):
            # JSON's -0 is the integer 0 to msgspec: PostgreSQL must see the client's '-0' (text, float). The docs
            # are searched joined, once (a match cannot span two: each ends with its '}'), not one by one: 2
            # ms for 10,000 rows against 6 when a stream holds zeros.
            return None
        return text.replace(b"]\n[", b"\n")[1:-2] + b"\n"  # '[a,b]\n[c,d]\n' -> 'a,b\nc,d\n'

    def _docs(self) -> list[bytes]:
        return [e.doc for e in self.elements]


def plan(table: Table, rows: Sequence[RowLike], keys_of: dict[int, tuple[str, ...]], *,
         nulls_ok: bool = False) -> list[Statement]:
    """Statements that apply ``rows`` (in offset order) to ``table``; ``keys_of`` gives each non-insert row's key.

    ``keys_of`` maps a row index to the unique key its destination resolved to (only rows of upsert or delete
    destinations, or every row when the table sees mixed modes, need one). ``nulls_ok``: the destination's
    ``allow_no_unique_key``, under which an insert whose unique key is null is not refused (:func:`null_guard`).
    """
    if not keys_of:  # inserts of one shape, or none giving the key their destination goes by
        statements = _plan_inserts(table, rows, nulls_ok)
        if len(statements) > 1 and len(table.unique_keys) > 1:  # shapes apart would reorder them: an insert of
            return _plan_in_order(table, rows, keys_of, nulls_ok)  # {token, note} before {token} must win
        return statements
    if len(table.unique_keys) > 1 or not all(_classed(table, key) for key in set(keys_of.values())):
        return _plan_in_order(table, rows, keys_of, nulls_ok)
    return _plan_rounds(table, rows, keys_of, nulls_ok)


def _classed(table: Table, key_cols: tuple[str, ...]) -> bool:
    """True when every column of the key has a type whose values :func:`_key_class` tells apart exactly as
    PostgreSQL does; a key of another type (a timestamp, a date, an inet) is planned in offset order instead,
    since two spellings of one of its values (``2026-01-01T00:00Z``, ``2026-01-01 00:00+00``) would otherwise be
    two keys to the rounds, and an upsert after a delete of one row could share the delete's round."""
    def build() -> bool:
        types = [table.columns[c].sql_type if c in table.columns else "" for c in key_cols]
        return all(_type_kind(t) != "text" or t in ("text", "character varying") for t in types)  # (no array)

    return table.derived(("classed", key_cols), build)


def plan_last_wins(table: Table, rows: Sequence[RowLike], key: tuple[str, ...]) -> list[Statement] | None:
    """Upserts of one shape to one unguarded destination as ONE statement, or None when they are not that.

    Folding two upserts of one key and one shape keeps the second (:func:`_fold`), so PostgreSQL can do it, in C:
    ``DISTINCT ON`` the key, the last by array position. Python then never decodes a key, and every element
    lands, the ones folded away included, as when the writer folds them. ``key`` is the destination's unique key.
    """
    first = rows[0]
    dest, keys = first.dest, first.keys
    if dest.mode != UPSERT or dest.version is not None or ORDINALITY in table.columns:
        return None
    if not all(c in keys for c in key) or all(c in key for c in keys):  # no key, or nothing to update
        return None
    if not all((r.dest is dest or r.dest == dest) and (r.keys is keys or r.keys == keys) for r in rows):
        return None
    stmt = Statement(UPSERT, keys, dest, statement_text(table, LAST_WINS, keys, dest, key), lands_all=True)
    stmt.elements = [Element(row.doc, [i]) for i, row in enumerate(rows)]
    return [stmt]


def _plan_inserts(table: Table, rows: Sequence[RowLike], nulls_ok: bool) -> list[Statement]:
    # Looked up by identity first: rows of one shape share their keys and destination objects (sort interns
    # them), so the shape is hashed once per object, not once per row.
    # Consecutive rows nearly always share their shape: the previous row's statement is checked first.
    by_id: dict[tuple[int, int], Statement] = {}
    by_shape: dict[tuple[tuple[str, ...], Destination], Statement] = {}
    last_keys: tuple[str, ...] | None = None
    last_dest: Destination | None = None
    elements: list[Element] = []
    for i, row in enumerate(rows):
        keys, dest = row.keys, row.dest
        if keys is not last_keys or dest is not last_dest:
            stmt = by_id.get((id(keys), id(dest)))
            if stmt is None:
                shape = (keys, dest)
                stmt = by_shape.get(shape)
                if stmt is None:
                    stmt = by_shape[shape] = Statement(INSERT, keys, dest,
                                                       statement_text(table, INSERT, keys, dest,
                                                                      _named(dest, keys), nulls_ok),
                                                       plain=plain_text(table, keys, nulls_ok), nulls_ok=nulls_ok)
                by_id[(id(keys), id(dest))] = stmt
            elements, last_keys, last_dest = stmt.elements, keys, dest
        elements.append(Element(row.doc, [i], row.values))
    return list(by_shape.values())


def _named(dest: Destination, columns: tuple[str, ...]) -> tuple[str, ...]:
    """The key an insert's destination names (``"key"``), when its rows give every column of it: its
    ``ON CONFLICT`` target on a table of several keys (:func:`insert_arbiter`)."""
    key = dest.key
    return key if key and all(c in columns for c in key) else ()


class _Op(msgspec.Struct, gc=False):
    kind: str
    doc: bytes
    keys: tuple[str, ...]
    dest: Destination
    sources: list[int]
    key: Any = None  # its key columns and their JSON text: only operations of equal text fold


def _plan_rounds(table: Table, rows: Sequence[RowLike], keys_of: dict[int, tuple[str, ...]],
                 nulls_ok: bool) -> list[Statement]:
    """Rounds per key *class*, not per key text: ``2``, ``"2"`` and ``" 2"`` are one bigint to PostgreSQL, so
    their operations must take effect in offset order too (:func:`_key_class`), while only operations of equal
    text fold. For a table with ONE unique key only: rows keyed alike cannot touch each other's rows, so their
    order between keys does not matter (a table with more: :func:`_plan_in_order`)."""
    per_key: dict[Any, list[_Op]] = {}
    last_cols: tuple[str, ...] | None = None
    decoder: msgspec.json.Decoder[Any] | None = None
    klass: Callable[[tuple[bytes, ...]], Any] = tuple  # (set with the first key columns)
    for i, row in enumerate(rows):
        key_cols = keys_of.get(i)
        if key_cols is None:  # an insert with no resolvable key in a mixed table: its own key, never folded
            per_key[(_KEYLESS, i)] = [_Op(INSERT, row.doc, row.keys, row.dest, [i])]
            continue
        if key_cols is not last_cols or decoder is None:  # (both cached on the table)
            decoder, klass, last_cols = _key_decoder(table, key_cols), _key_class(table, key_cols), key_cols
        values = _key_values(decoder, row.doc)
        op = _Op(row.dest.mode, row.doc, row.keys, row.dest, [i], values)
        group = klass(values)
        ops = per_key.get(group)
        if ops is None:
            per_key[group] = [op]
        elif ops[-1].key != values or not _fold(ops, op):
            ops.append(op)
    # Statements per round and shape; looked up by identity first (rows of one shape share their keys and
    # destination objects), so a shape is hashed once per object, not once per row.
    rounds: list[dict[tuple[str, tuple[str, ...], Destination], Statement]] = []
    by_id: list[dict[tuple[str, int, int], Statement]] = []
    for ops in per_key.values():
        for r, op in enumerate(ops):
            if r == len(rounds):
                rounds.append({})
                by_id.append({})
            columns = op.keys if op.kind != DELETE else ()
            ident = (op.kind, id(columns), id(op.dest))
            stmt = by_id[r].get(ident)
            if stmt is None:
                shape = (op.kind, columns, op.dest)
                stmt = rounds[r].get(shape)
                if stmt is None:
                    key = keys_of.get(op.sources[0], ())
                    stmt = rounds[r][shape] = Statement(op.kind, columns, op.dest,
                                                        statement_text(table, op.kind, columns, op.dest, key,
                                                                       nulls_ok), nulls_ok=nulls_ok)
                    if op.kind == INSERT:
                        stmt.plain = plain_text(table, columns, nulls_ok)
                by_id[r][ident] = stmt
            doc = op.doc if op.kind != DELETE else key_doc(op.doc, keys_of.get(op.sources[0], ()), op.dest.version)
            stmt.elements.append(Element(doc, op.sources))
    return [stmt for shapes in rounds for stmt in shapes.values()]


_raw_fields = msgspec.json.Decoder(dict[str, msgspec.Raw])


def key_doc(doc: bytes, key: tuple[str, ...], version: str | None) -> bytes:
    """A delete's document cut to its key (and version) values, as the client wrote them (CONTRACT: a delete reads
    nothing else). PostgreSQL's JSON functions read every value of a document, so a value another column would
    refuse (a \\u0000 in text, a string for an int) refused the delete, and the row stayed (a hostile run)."""
    if not key:
        return doc
    try:
        values = _raw_fields.decode(as_bytes(doc))
    except (msgspec.DecodeError, UnicodeDecodeError):
        return doc  # (the server says what is wrong with it)
    read = key if version is None or version in key else (*key, version)
    if len(values) == len(read) and all(c in values for c in read):
        return doc
    return b"{" + b",".join(msgspec.json.encode(c) + b":" + bytes(values[c]) for c in read if c in values) + b"}"


def _plan_in_order(table: Table, rows: Sequence[RowLike], keys_of: dict[int, tuple[str, ...]],
                   nulls_ok: bool) -> list[Statement]:
    """Statements in offset order, for a table with more than one unique key: consecutive rows of one operation
    and shape share a statement, nothing is folded or reordered.

    With two unique keys (an ``id`` and an ``email``, say), rows of different ``id`` interact through ``email``:
    an insert that takes an email another row frees later, an upsert that clashes with one; rounds per ``id``
    reordered them (a hostile run lost 2,000 of 4,000 rows so, with no error). A statement takes its rows in
    array order, each seeing the ones before it, so a run of consecutive rows is what applying them one by one
    is; an upsert run is cut where its key comes again (PostgreSQL refuses to touch one row twice in one
    statement). Mixed traffic to such a table costs more statements; rows of one shape and mode are still one.
    """
    out: list[Statement] = []
    current: Statement | None = None
    seen: set[Any] = set()
    last_cols: tuple[str, ...] | None = None
    decoder: msgspec.json.Decoder[Any] | None = None
    klass: Callable[[tuple[bytes, ...]], Any] = tuple
    for i, row in enumerate(rows):
        dest, kind = row.dest, row.dest.mode
        columns = row.keys if kind != DELETE else ()
        key_cols = keys_of.get(i, ())
        group: Any = None
        if kind == UPSERT and key_cols:
            if key_cols is not last_cols or decoder is None:
                decoder, klass, last_cols = _key_decoder(table, key_cols), _key_class(table, key_cols), key_cols
            group = (key_cols, klass(_key_values(decoder, row.doc)))
        if current is None or current.kind != kind or not (current.dest is dest or current.dest == dest) \
                or not (current.columns is columns or current.columns == columns) or group in seen:
            current = Statement(kind, columns, dest, statement_text(table, kind, columns, dest, key_cols, nulls_ok),
                                nulls_ok=nulls_ok)
            if kind == INSERT:
                current.plain = plain_text(table, columns, nulls_ok)
            out.append(current)
            seen.clear()
        if group is not None:
            seen.add(group)
        current.elements.append(Element(row.doc if kind != DELETE else key_doc(row.doc, key_cols, dest.version),
                                        [i]))
    return out


def _key_decoder(table: Table, key_cols: tuple[str, ...]) -> msgspec.json.Decoder[Any]:
    """A decoder of the key columns alone, cached on the table: the other values are skipped, not built (a
    quarter of the time of decoding the whole row, on every upsert and delete)."""
    def build() -> msgspec.json.Decoder[Any]:
        fields = [(f"k{i}", msgspec.Raw, msgspec.Raw(b"")) for i in range(len(key_cols))]
        struct = msgspec.defstruct("Key", fields, rename={f"k{i}": c for i, c in enumerate(key_cols)}, gc=False)
        return msgspec.json.Decoder(struct)

    return table.derived(("key-decoder", key_cols), build)


def _key_values(decoder: msgspec.json.Decoder[Any], doc: bytes) -> tuple[bytes, ...]:
    """The raw JSON of each key column (b"" when absent), a key for folding: equal text, equal key."""
    raws = msgspec.structs.astuple(decoder.decode(doc))
    if len(raws) == 1:  # the common one-column key, without a generator
        return (bytes(raws[0]).strip(),)
    return tuple(bytes(raw).strip() for raw in raws)


_KEYLESS = object()  # per_key's mark of an insert without its key (never equal to a key's class)
# format_type's spellings of numeric(p,s) and varchar(n) (an array of them, "numeric(6,2)[]", is neither)
_NUMERIC = re.compile(r"numeric\(\d+(?:,(-?\d+))?\)")
_VARCHAR = re.compile(r"character varying\((\d+)\)")


def _key_class(table: Table, key_cols: tuple[str, ...]) -> Callable[[tuple[bytes, ...]], Any]:
    """What a key's JSON texts are to PostgreSQL, as far as its columns' types tell, cached on the table: numbers
    by value (``2``, ``2.0``, ``"2"``, ``" 2 "``, ``1e0``), text by its characters (escapes read), ``character(n)``
    without trailing spaces, ``citext`` in lower case, uuids in one spelling, booleans by truth. A key of a type
    not named here is not planned in rounds at all (:func:`_classed`)."""
    def build() -> Callable[[tuple[bytes, ...]], Any]:
        kinds = [_type_kind(table.columns[c].sql_type if c in table.columns else "") for c in key_cols]
        if len(kinds) > 1:
            return lambda raws: tuple(map(_class_value, raws, kinds))
        kind = kinds[0]
        if kind == "number":  # the common key: one integer column, its values plain integers (no call, no tuple)
            return lambda raws: int(raws[0]) if raws[0].isdigit() and len(raws[0]) < 19 else _class_value(
                raws[0], kind)
        return lambda raws: _class_value(raws[0], kind)

    return table.derived(("key-class", key_cols), build)


def _type_kind(sql_type: str) -> str:
    """A key column's kind for :func:`_class_value`: two JSON texts PostgreSQL takes for one value must get one
    class (two values may share one: that only orders them). A hostile run found equal keys in two classes, each
    planned in one round, so a delete and an upsert of one row ran in the order their shapes were made: values a
    ``numeric(6,2)`` rounds to one (``1.001``, ``1.004``), float spellings of one double (``0.10000000000000001``,
    ``0.1``), a ``varchar(3)`` that drops trailing spaces (``"abc   "``), a boolean prefix (``"tru"``) and citext,
    whose case folding is the database's own (``İ`` is ``i`` in C.UTF-8, two characters to Python)."""
    if sql_type in ("smallint", "integer", "bigint") or sql_type == "numeric":
        return "number"
    if numeric := _NUMERIC.fullmatch(sql_type):  # numeric(p,s): rounded to its scale, half away from zero
        return f"number:{int(numeric[1] or 0)}"
    if sql_type in ("real", "double precision"):
        return "real" if sql_type == "real" else "double"
    if sql_type == "character" or sql_type.startswith("character("):
        return "bpchar"
    if varchar := _VARCHAR.fullmatch(sql_type):  # a value past the length loses its trailing spaces
        return f"varchar:{int(varchar[1])}"
    if sql_type in ("uuid", "boolean"):
        return sql_type
    return "text"


def _class_value(raw: bytes, kind: str) -> Any:
    """One key value's class (see :func:`_key_class`); its JSON text when it is not what the type reads."""
    if kind == "number" and raw.isdigit() and len(raw) < 19:  # the common case: a plain non-negative bigint
        return int(raw)
    try:
        value = msgspec.json.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError):  # b"" (absent)
        return raw
    text = value if isinstance(value, str) else raw.decode()
    if kind.startswith("number") and not isinstance(value, bool):
        try:
            number = Decimal(text.strip())
        except ArithmeticError:
            return text
        if not number.is_finite():
            return text.strip().lower()
        if kind != "number":  # numeric(p,s)
            try:
                return number.quantize(Decimal(1).scaleb(-int(kind[len("number:"):])), rounding=ROUND_HALF_UP)
            except ArithmeticError:  # past the context's precision: PostgreSQL refuses it (numeric overflow)
                return number
        return number
    if kind in ("real", "double") and not isinstance(value, bool):
        try:
            double = float(text.strip())
        except (ValueError, OverflowError):
            return text
        if not math.isfinite(double):
            return text.strip().lower()
        # a real is read to the nearest float32, and text -> double -> float32 may round twice: six significant
        # digits class every float32 spelling of one value together (and sometimes two close ones: no harm)
        return float(f"{double:.6g}") if kind == "real" else double
    if kind == "bpchar":
        return text.rstrip(" ")
    if kind.startswith("varchar:"):
        limit = int(kind[len("varchar:"):])
        return text[:limit] if len(text) > limit and not text[limit:].strip(" ") else text
    if kind == "uuid":
        try:
            return uuid.UUID(text.strip()).int
        except ValueError:
            return text
    if kind == "boolean":
        return _boolean(text)
    return text


def _boolean(text: str) -> bool | str:
    """As PostgreSQL's ``boolin`` reads it: any prefix of true, false, yes, no; on, off (or of); 1, 0."""
    word = text.strip().lower()
    if word in ("1", "0"):
        return word == "1"
    for full, truth in (("true", True), ("false", False), ("yes", True), ("no", False)):
        if word and full.startswith(word):
            return truth
    if word == "on" or word in ("of", "off"):
        return word == "on"
    return word


def _fold(ops: list[_Op], op: _Op) -> bool:
    """Fold ``op`` into the key's last operation when applying it would change nothing and could fail in no way
    the last one does not: a second delete of the same key text. True if folded.

    Nothing else is folded, though the table would end the same: a packet's values are checked only when it is
    applied, so an upsert folded into a later one (or into a delete) hid a value its column refuses, and merging two
    upserts of different columns landed the refused packet's other columns (a hostile run: ``{v: "bad", note:
    "BAD"}`` then ``{v: 5}`` left note BAD with no error). Each operation is its own round instead; upserts of one
    shape are still folded by PostgreSQL after typing every value (:func:`plan_last_wins`)."""
    last = ops[-1]
    if (last.kind, op.kind) != (DELETE, DELETE) or last.dest != op.dest or op.dest.version is not None:
        return False  # (a guarded delete's version is its own: never dropped)
    last.sources.append(op.sources[0])
    return True


def statement_text(table: Table, kind: str, columns: tuple[str, ...], dest: Destination,
                   key: tuple[str, ...], nulls_ok: bool = False) -> str:
    """The SQL of one statement shape, built once per table and cached on its catalog entry."""
    return table.derived((kind, columns, key, dest.version, nulls_ok and kind == INSERT),
                         lambda: _build(table, kind, columns, key, dest.version, nulls_ok).as_string(None))


def plain_text(table: Table, columns: tuple[str, ...], nulls_ok: bool = False) -> str:
    """An insert of ``columns`` without ``ON CONFLICT``: cheaper per row, and refused at the first duplicate."""
    return table.derived(("plain", columns, nulls_ok), lambda: _insert_head(
        table, columns, None if nulls_ok else null_guard(table, INSERT, columns, ())).as_string(None))


# The SQLSTATE of pg_temp.kapow_refuse (kapow.postgres.writer): a row whose unique key is null, refused in the
# statement itself so that the writer's isolation finds the row and the client gets the reason (missing_key).
NULL_KEY_STATE = "KPW01"


def null_guard(table: Table, kind: str, columns: tuple[str, ...], key: tuple[str, ...],
               qualifier: str | None = None) -> sql.Composable | None:
    """A ``WHERE`` condition that raises :data:`NULL_KEY_STATE` for a row whose unique key is null, or None when
    the table's own ``NOT NULL`` makes that impossible (a primary key: nearly every table, at no cost).

    PostgreSQL lets nulls repeat in a unique column: an insert whose only unique key is null lands again at every
    replay (a crash, a rebalance, a client resending), an upsert by a null key adds a row every time, and a delete
    by one deletes nothing. An insert needs ONE unique key of the columns it gives that is wholly non-null (its
    ``ON CONFLICT DO NOTHING`` catches a conflict on any); an upsert or delete needs its own key.
    """
    where = f"{table.schema}.{table.name}"
    if kind == INSERT:
        candidates = [k for k in table.unique_keys if all(c in columns for c in k)]
        if not candidates or any(k in table.null_keys or all(table.columns[c].not_null for c in k
                                                              if c in table.columns) for k in candidates):
            return None
        shown = "; ".join(f"({', '.join(k)})" for k in candidates[:3])
        message = (f"insert's unique key of {where} holds a null ({shorten(shown, 200)}): a replay would add the"
                   " row again; give the key a value (or set allow_no_unique_key for this destination)")
    else:
        candidates = [key]
        if not key or key in table.null_keys:
            return None  # (UNIQUE NULLS NOT DISTINCT: a null is a key, matched and conflicting as any value)
        if kind != DELETE and all(table.columns[c].not_null for c in key if c in table.columns):
            return None  # an upsert's insert refuses the null itself (missing_column); a delete would match nothing
        message = (f"{'upsert' if kind == LAST_WINS else kind} key ({shorten(', '.join(key), 200)}) of {where}"
                   " holds a null, which matches no row; give the key a value")
    nullable = [[c for c in k if c in table.columns and not table.columns[c].not_null] for k in candidates]
    if kind == DELETE and not any(nullable):  # NOT NULL key columns: a null given for any of them is refused
        nullable = [[c for c in key if c in table.columns]]
    column = nullable[0][0] if len(nullable) == 1 and len(nullable[0]) == 1 else ""

    def named(c: str) -> sql.Composable:
        return sql.Identifier(qualifier, c) if qualifier else sql.Identifier(c)

    given = sql.SQL(" OR ").join(
        sql.SQL("({})").format(sql.SQL(" AND ").join(sql.SQL("{} IS NOT NULL").format(named(c)) for c in cols))
        for cols in nullable)
    return sql.SQL("CASE WHEN {given} THEN true ELSE pg_temp.kapow_refuse({message}, {column}) END").format(
        given=given, message=sql.Literal(message), column=sql.Literal(column))


def insert_arbiter(table: Table, columns: tuple[str, ...], named: tuple[str, ...] = ()) -> tuple[str, ...] | None:
    """The key an insert's ``ON CONFLICT`` names, or None: no target, a conflict on any unique key is a duplicate.

    ``named``: the key the destination names (``"key"``), tried first, so that the writer's duplicate is the one
    the audit judges by (a row of a new named key whose primary key another row holds was a silent duplicate, and
    the audit, judging by the named key, reported it missing).

    A :attr:`~kapow.postgres.catalog.Table.targeted` table (an exclusion constraint or a deferrable unique key) names
    the primary key when the insert gives it, else the first immediate unique key it gives: without a target,
    PostgreSQL took an exclusion conflict for a duplicate (the row dropped, counted as landed) and refused the
    statement beside a deferrable key. A table of :attr:`~kapow.postgres.catalog.Table.several_keys` names the
    primary key, or a unique key that cannot hold a null, when the insert gives one: without a target, a row of a
    new key that met another row on a second key was dropped unreported (a hostile run); with one, it fails alone
    (``constraint_violation``) while a replay conflicts on the named key, a duplicate. A nullable key is never named
    there: a row whose value for it is null would not conflict on it, and its replay would fail on another key; such
    an insert keeps the target-less form (what :func:`null_guard` lets through has another key given)."""
    keys = ([table.primary_key] if table.primary_key else []) + list(table.unique_keys)
    if named:  # the table's own spelling of it (the index's column order), first
        keys = [k for k in keys if set(k) == set(named)][:1] + keys
    if table.targeted:
        return next((k for k in keys if all(c in columns for c in k)), None)
    if not table.several_keys:
        return None
    cols = table.columns
    return next((k for k in keys if all(c in columns and (cols[c].not_null if c in cols else False) for c in k)
                 or (k in table.null_keys and all(c in columns for c in k))), None)


def rows_source(table: Table, columns: tuple[str, ...]) -> sql.Composable:
    """The statement's rows from its JSON payload (``$1``), each value typed by its column.

    ``json_populate_recordset(NULL::tbl, …)`` makes whole rows of the table's type, so a domain column the rows
    leave out is a NULL of that domain: a ``NOT NULL`` domain (or one whose ``CHECK`` refuses NULL) refused every
    packet that left it out, though the insert takes the column's default (a hostile run: a table's every packet
    refused as missing_column). Such a statement reads its rows with ``json_to_recordset`` and the given columns'
    own types instead; anything else keeps the plain form (its text is the same as before, and so its plans).
    """
    if not any(c.domain and c.name not in columns for c in table.columns.values()):
        return sql.SQL("json_populate_recordset(NULL::{tbl}, $1::json)").format(tbl=table.qualified)
    typed = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(table.columns[c].sql_type))
                               for c in columns if c in table.columns)  # (the catalog's format_type: quoted)
    return sql.SQL("ROWS FROM (json_to_recordset($1::json) AS ({typed}))").format(typed=typed)


def version_gate(table: Table, version: str | None, qualifier: str | None = None) -> sql.Composable | None:
    """A ``WHERE`` condition that refuses (:data:`NULL_KEY_STATE`, missing_key) a guarded write whose version is
    null, or None without a guard. A null compares as nothing: such an upsert did nothing to an existing row and
    inserted a new one, silently, while an absent version was refused (a hostile run). A stored null version, for
    its part, is older than any (the guards say ``IS NULL OR <=``): such a row could never be written again."""
    if version is None:
        return None
    where = f"{table.schema}.{table.name}"
    message = (f"version {shorten(version, 100)} of {where} is null: a guarded upsert or delete compares versions;"
               " give it a value")
    column = sql.Identifier(qualifier, version) if qualifier else sql.Identifier(version)
    return sql.SQL("CASE WHEN {c} IS NOT NULL THEN true ELSE pg_temp.kapow_refuse({m}, {v}) END").format(
        c=column, m=sql.Literal(message), v=sql.Literal(version))


def _both(a: sql.Composable | None, b: sql.Composable | None) -> sql.Composable | None:
    if a is None or b is None:
        return a if b is None else b
    return sql.SQL("(({}) AND ({}))").format(a, b)  # whole: callers put NOT before it


def _insert_head(table: Table, columns: tuple[str, ...], guard: sql.Composable | None = None) -> sql.Composed:
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    source = rows_source(table, columns)
    where = sql.SQL(" WHERE {}").format(guard) if guard is not None else sql.SQL("")
    return sql.SQL("INSERT INTO {tbl} AS t ({cols}) SELECT {cols} FROM {source}{where}").format(
        tbl=table.qualified, cols=cols, source=source, where=where)


def _build(table: Table, kind: str, columns: tuple[str, ...], key: tuple[str, ...],
           version: str | None, nulls_ok: bool = False) -> sql.Composed:
    tbl = table.qualified
    # (a delete is built with no columns of its own: what it reads of its rows is its key and version)
    source = rows_source(table, tuple(dict.fromkeys((*columns, *key, *([version] if version else [])))))
    if kind == DELETE:
        nulls_match = key in table.null_keys  # a null key deletes the row whose key is null (not = : IS NULL)
        match = sql.SQL(" AND ").join(
            (sql.SQL("(t.{c} = r.{c} OR (t.{c} IS NULL AND r.{c} IS NULL))") if nulls_match and c in table.columns
             and not table.columns[c].not_null else sql.SQL("t.{c} = r.{c}")).format(c=sql.Identifier(c))
            for c in key)
        guard = sql.SQL(" AND (t.{v} IS NULL OR t.{v} <= r.{v})").format(v=sql.Identifier(version)) if version \
            else sql.SQL("")
        refuse = _both(null_guard(table, DELETE, columns, key, "q"), version_gate(table, version, "q"))
        if refuse is not None:  # a gate read before the join (PostgreSQL's one-time filter): in the join, it was
            # never evaluated when the table had no row to match, and the delete by a null key counted as done
            guard = sql.SQL(" AND NOT EXISTS (SELECT FROM {source} AS q WHERE NOT {refuse}){guard}").format(
                source=source, refuse=refuse, guard=guard)
        return sql.SQL("DELETE FROM {tbl} AS t USING {source} AS r WHERE {match}{guard}").format(
            tbl=tbl, source=source, match=match, guard=guard)
    refuse = None if kind == INSERT and nulls_ok else null_guard(table, kind, columns, key)
    if kind != INSERT:
        refuse = _both(refuse, version_gate(table, version))
    head = _insert_head(table, columns, refuse)
    if kind == LAST_WINS:
        by = sql.SQL(", ").join(sql.SQL("r.{c}").format(c=sql.Identifier(c)) for c in key)
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
        where = sql.SQL(" WHERE {}").format(refuse) if refuse is not None else sql.SQL("")
        head = sql.SQL("INSERT INTO {tbl} AS t ({cols}) SELECT DISTINCT ON ({by}) {cols} FROM {source} WITH ORDINALITY"
                       " AS r{where} ORDER BY {by}, r.ordinality DESC").format(tbl=tbl, cols=cols, by=by,
                                                                             source=source, where=where)
    if kind == INSERT:
        arbiter = insert_arbiter(table, columns, key)
        if arbiter is None:
            return sql.SQL("{head} ON CONFLICT DO NOTHING").format(head=head)
        return sql.SQL("{head} ON CONFLICT ({target}) DO NOTHING").format(
            head=head, target=sql.SQL(", ").join(sql.Identifier(c) for c in arbiter))
    updates = [c for c in columns if c not in key]
    target = sql.SQL(", ").join(sql.Identifier(c) for c in key)
    if not updates:
        return sql.SQL("{head} ON CONFLICT ({target}) DO NOTHING").format(head=head, target=target)
    assign = sql.SQL(", ").join(sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in updates)
    guard = sql.SQL(" WHERE t.{v} IS NULL OR t.{v} <= EXCLUDED.{v}").format(v=sql.Identifier(version)) if version \
        else sql.SQL("")
    return sql.SQL("{head} ON CONFLICT ({target}) DO UPDATE SET {assign}{guard}").format(
        head=head, target=target, assign=assign, guard=guard)
