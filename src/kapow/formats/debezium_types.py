"""Which columns of a Debezium row need converting, and how: a *plan* built once per schema, applied per event.

A plan maps a column name to a converter (one JSON value in, one JSON-ready value out). Columns whose JSON form
is already what ``json_populate_recordset`` reads (integers, text, booleans, uuid, enum, inet, ranges, arrays of
those) are not in the plan at all, so a typical row costs a handful of dictionary look-ups, not a call per column.

Two sources of truth, in order of authority:
* with the JSON converter's schema envelope, the Connect schema of each field: its logical ``name``
  (``io.debezium.time.MicroTimestamp``, ``org.apache.kafka.connect.data.Decimal`` …), its ``parameters`` (a
  Decimal's scale, a Bits length) and, for arrays, the schema of the items;
* without it (``schemas.enable=false``), the target column's PostgreSQL type as ``format_type()`` spells it, read
  with Debezium's defaults (``time.precision.mode=adaptive``, ``decimal.handling.mode=precise``,
  ``binary.handling.mode=bytes``). Where the JSON value alone cannot say what it is — a base64 Decimal with no
  scale anywhere — the converter refuses it with the reason instead of guessing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from kapow.formats import values as v
from kapow.formats.values import BadValue

Converter = Callable[[Any], Any]
Plan = Mapping[str, Converter]


class SchemaField(msgspec.Struct, forbid_unknown_fields=False):
    """One node of a Connect JSON schema (the converter's ``schema`` block); unknown keys are ignored."""

    type: str
    field: str | None = None
    name: str | None = None
    optional: bool = False
    parameters: dict[str, str] | None = None
    fields: list[SchemaField] | None = None
    items: SchemaField | None = None


# ---------------------------------------------------------------- JSON columns


def json_converter(max_depth: int) -> Converter:
    """``io.debezium.data.Json``: a string holding JSON, passed on as that JSON itself (byte for byte, so that a
    ``json`` column keeps its whitespace and key order), after checking it parses and is not too deep."""
    decode = msgspec.json.Decoder().decode

    def convert(value: Any) -> Any:
        if type(value) is not str:
            if type(value) in (dict, list):
                return value  # a transform already unwrapped it
            raise BadValue(f"a Json value must be a string holding JSON, got {v._kind(value)}")
        raw = value.encode()
        try:
            parsed = decode(raw)
        except RecursionError:
            raise BadValue("a Json value is nested too deeply") from None
        except (msgspec.DecodeError, UnicodeDecodeError, msgspec.ValidationError):
            raise BadValue("a Json value does not hold valid JSON") from None
        if raw.count(b"[") + raw.count(b"{") > max_depth and depth(parsed, max_depth + 1) > max_depth:
            raise BadValue(f"a Json value is nested deeper than {max_depth} levels")
        return msgspec.Raw(raw)

    return convert


def depth(value: Any, limit: int) -> int:
    """Nesting depth of a decoded JSON value (a scalar is 0), stopping once past ``limit``."""
    level = 0
    current: list[Any] = [value]
    while current and level <= limit:
        nxt: list[Any] = []
        for item in current:
            if type(item) is dict:
                nxt.extend(x for x in item.values() if type(x) in (dict, list))
            elif type(item) is list:
                nxt.extend(x for x in item if type(x) in (dict, list))
        if not nxt and not any(type(x) in (dict, list) for x in current):
            break
        level += 1
        current = nxt
    return level


def array_of(element: Converter) -> Converter:
    """An array column whose elements need converting; nulls stay null, nested arrays (n dimensions) recurse."""

    def convert(value: Any) -> Any:
        if type(value) is not list:
            raise BadValue(f"an array column must be a JSON array, got {v._kind(value)}")
        return [None if x is None else convert(x) if type(x) is list else element(x) for x in value]

    return convert


# ---------------------------------------------------------------- from a Connect schema

_BY_NAME: dict[str, Converter] = {
    "io.debezium.time.Date": v.date_from_days,
    "org.apache.kafka.connect.data.Date": v.date_from_days,
    "io.debezium.time.Time": v.time_from_millis,
    "org.apache.kafka.connect.data.Time": v.time_from_millis,
    "io.debezium.time.MicroTime": v.time_from_micros,
    "io.debezium.time.NanoTime": v.time_from_nanos,
    "io.debezium.time.Timestamp": v.timestamp_from_millis,
    "org.apache.kafka.connect.data.Timestamp": v.timestamp_from_millis,
    "io.debezium.time.MicroTimestamp": v.timestamp_from_micros,
    "io.debezium.time.NanoTimestamp": v.timestamp_from_nanos,
    "io.debezium.time.ZonedTimestamp": v.zoned_timestamp,
    "io.debezium.time.MicroDuration": v.interval_from_micros,
    "io.debezium.data.VariableScaleDecimal": v.variable_scale_decimal,
    "io.debezium.data.geometry.Point": v.point,
}
# Logical names whose JSON form is already PostgreSQL input text: no converter.
_AS_IS = frozenset({
    "io.debezium.time.ZonedTime", "io.debezium.time.Interval", "io.debezium.time.IsoDate",
    "io.debezium.time.IsoTime", "io.debezium.time.IsoTimestamp", "io.debezium.data.Uuid", "io.debezium.data.Enum",
    "io.debezium.data.EnumSet", "io.debezium.data.Xml", "io.debezium.data.Ltree",
})


def _scale(field: SchemaField) -> int:
    params = field.parameters or {}
    try:
        return int(params["scale"])
    except (KeyError, ValueError):
        raise BadValue(f"Decimal field {field.field!r} has no integer scale parameter") from None


def schema_converter(field: SchemaField, max_depth: int, column_type: str | None = None) -> Converter | None:
    """The converter one Connect field needs, or None when its JSON value goes to PostgreSQL as it is."""
    name = field.name
    if name is not None:
        known = _BY_NAME.get(name)
        if known is not None:
            return known
        if name == "org.apache.kafka.connect.data.Decimal":
            scale = _scale(field)
            return lambda value: v.decimal_from_bytes(value, scale)
        if name == "io.debezium.data.Json":
            return json_converter(max_depth)
        if name == "io.debezium.data.Bits":
            length = (field.parameters or {}).get("length")
            fixed = None if column_type and column_type.startswith("bit varying") else length
            width = int(fixed) if fixed and fixed.isdigit() else None
            return lambda value: v.bits(value, width)
        if name in _AS_IS:
            return None
    if field.type == "bytes":
        return v.bytea_hex
    if field.type == "boolean" and column_type is not None and column_type.startswith("bit"):
        return lambda value: v.bits(value, 1)  # bit(1) arrives as a boolean; PostgreSQL's bit reads "1"/"0"
    if field.type == "array" and field.items is not None:
        element_type = column_type[:-2] if column_type and column_type.endswith("[]") else None
        element = schema_converter(field.items, max_depth, element_type)
        return array_of(element) if element is not None else None
    return None


def schema_plan(row: SchemaField, max_depth: int,
                column_types: Mapping[str, str] | None = None) -> dict[str, Converter]:
    """The plan for a row struct (``before``/``after``, or a record key) from its Connect schema."""
    if row.type != "struct" or row.fields is None:
        raise BadValue(f"a row schema must be a struct with fields, got {row.type!r}")
    plan: dict[str, Converter] = {}
    for f in row.fields:
        if f.field is None:
            raise BadValue("a field of the row schema has no name")
        conv = schema_converter(f, max_depth, (column_types or {}).get(f.field))
        if conv is not None:
            plan[f.field] = conv
    return plan


# ---------------------------------------------------------------- from the target columns' PostgreSQL types

_TYPE = re.compile(r"(?P<base>[a-z ]+?)(?:\((?P<mods>[0-9, ]+)\))?(?P<tail>(?: with(?:out)? time zone)?)"
                   r"(?P<dims>(?:\[\])*)")


def _no_scale(value: Any) -> Any:
    if type(value) is dict:
        return v.variable_scale_decimal(value)
    if type(value) is str:
        if v._DECIMAL_TEXT.fullmatch(value):
            return value  # decimal.handling.mode=string
        raise BadValue("a base64 Decimal without its scale: an unconstrained numeric column needs the schema "
                       "envelope (schemas.enable=true) or Debezium's VariableScaleDecimal")
    return value  # a JSON number (decimal.handling.mode=double)


def _numeric(scale: int) -> Converter:
    def convert(value: Any) -> Any:
        if type(value) is dict:
            return v.variable_scale_decimal(value)
        if type(value) is str:
            return v.decimal_maybe_text(value, scale)
        return value

    return convert


def _int_or_text(on_int: Converter) -> Converter:
    """Integers are Debezium's encoding; a string is taken as PostgreSQL text already (ISO modes, transforms)."""

    def convert(value: Any) -> Any:
        return value if type(value) is str else on_int(value)

    return convert


def _text_only(what: str) -> Converter:
    def convert(value: Any) -> Any:
        if type(value) is str:
            return v.zoned_timestamp(value) if what == "timestamp with time zone" else value
        raise BadValue(f"a {what} column needs Debezium's ISO 8601 string, got {v._kind(value)} (its unit is not "
                       "knowable without the schema envelope)")

    return convert


def column_converter(pg_type: str, max_depth: int) -> Converter | None:
    """The converter for a bare (schema-less) value landing in a column of ``pg_type`` (``format_type()`` text)."""
    m = _TYPE.fullmatch(pg_type.strip().lower())
    if m is None:
        return None
    base, mods, tail, dims = m["base"].strip(), m["mods"], m["tail"].strip(), m["dims"]
    args = [int(x) for x in mods.split(",")] if mods else []
    conv: Converter | None
    if base == "date":
        conv = _int_or_text(v.date_from_days)
    elif base == "timestamp":
        if tail == "with time zone":
            conv = _text_only("timestamp with time zone")
        else:
            conv = _int_or_text(v.timestamp_from_millis if args and args[0] <= 3 else v.timestamp_from_micros)
    elif base == "time":
        if tail == "with time zone":
            conv = None
        else:
            conv = _int_or_text(v.time_from_millis if args and args[0] <= 3 else v.time_from_micros)
    elif base == "interval":
        conv = _int_or_text(v.interval_from_micros)
    elif base == "numeric":
        conv = _numeric(args[1] if len(args) == 2 else 0) if args else _no_scale
    elif base == "money":
        conv = _numeric(2)  # Debezium's money.fraction.digits default
    elif base == "bytea":
        conv = v.bytea_hex
    elif base in ("json", "jsonb"):
        conv = json_converter(max_depth)
    elif base == "bit":
        width = args[0] if args else 1
        conv = lambda value: v.bits(value, width)  # noqa: E731
    elif base == "bit varying":
        conv = lambda value: v.bits(value, None)  # noqa: E731
    elif base == "point":
        conv = v.point
    else:
        conv = None
    if conv is not None and dims:
        conv = array_of(conv)
    return conv


def column_plan(column_types: Mapping[str, str], max_depth: int) -> dict[str, Converter]:
    """The plan for bare rows landing in columns of these types."""
    plan: dict[str, Converter] = {}
    for column, pg_type in column_types.items():
        conv = column_converter(pg_type, max_depth)
        if conv is not None:
            plan[column] = conv
    return plan
