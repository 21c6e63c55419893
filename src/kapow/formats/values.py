"""Scalar conversions from Debezium's wire encodings to text PostgreSQL's input functions accept.

Each function takes one JSON value as msgspec decoded it and returns what the row should carry for it, or raises
:class:`BadValue` (a ``ValueError``) with a short reason. They are pure and allocation-light because they run once
per converted column per event; plain columns (ints, text, booleans) never reach them.

Why text and not Python objects: the row is JSON handed to ``json_populate_recordset``, which parses each value
with the column type's own input function. Text is therefore the one exact carrier: a numeric's digits, a
timestamp's microseconds, a date 4,000 years BC all survive, where ``datetime`` (years 1..9999) or ``float`` would
not. ``datetime`` is still the fast path for ordinary years, with integer calendar arithmetic as the fallback.

Debezium quirks handled here (measured on Debezium 3.6.1 + pgjdbc 42.7 against PostgreSQL 15):
* ``infinity``/``-infinity`` dates and timestamps arrive as pgjdbc's sentinel instants converted with overflow:
  ``±9223372036825200000``-ish micros/millis for timestamps, and for dates four out-of-range day numbers (the
  snapshot and the stream disagree). They are mapped back to ``infinity``/``-infinity``.
* ``ZonedTimestamp`` writes years beyond 9999 as ``+10000-…`` and BC years as ISO astronomical years
  (``-4712-…`` is 4713 BC); PostgreSQL wants ``10000-…`` and ``4713-… BC``.
* ``MicroDuration`` is a plain count of microseconds in which Debezium turned months into 30.4375 days: the
  month count cannot be recovered (set ``interval.handling.mode=string`` on the connector for exact intervals).
"""

from __future__ import annotations

import binascii
import datetime as dt
import re
from typing import Any

_EPOCH = dt.datetime(1970, 1, 1)  # Debezium's local timestamps are naive, counted from this instant
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
_DAY_US = 86_400_000_000
_MAX_SCALE = 16_383  # PostgreSQL numeric's limit on digits after the point
_MAX_DIGITS = 4_000  # below Python's int->str guard (4,300), far beyond PostgreSQL numeric(1000, …)

# pgjdbc's PGStatement.DATE_POSITIVE_INFINITY / DATE_NEGATIVE_INFINITY (milliseconds) as Debezium passes them on.
_TS_INFINITY_MS = {9_223_372_036_825_200: "infinity", -9_223_372_036_832_400: "-infinity"}
_TS_INFINITY_US = {k * 1000: v for k, v in _TS_INFINITY_MS.items()}
_TS_INFINITY_NS = {k * 1_000_000: v for k, v in _TS_INFINITY_MS.items()}
# The same sentinels after Debezium's overflowing conversion to epoch days (snapshot, then streaming values).
_DATE_INFINITY = {-622_191_234: "infinity", -625_821_272: "-infinity",
                  -2_147_472_692: "infinity", -2_147_472_691: "-infinity"}


class BadValue(ValueError):
    """A value does not fit the type its schema (or its column) declares."""


def _int(value: Any, what: str) -> int:
    if type(value) is not int:
        raise BadValue(f"{what} must be an integer, got {_kind(value)}")
    return value


def _str(value: Any, what: str) -> str:
    if type(value) is not str:
        raise BadValue(f"{what} must be a string, got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


# ---------------------------------------------------------------- calendar


def _civil(days: int) -> tuple[int, int, int]:
    """Proleptic Gregorian (year, month, day) of a day number since 1970-01-01, any year (H. Hinnant's algorithm)."""
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day


def _date_text(days: int) -> str:
    """``YYYY-MM-DD``, with PostgreSQL's `` BC`` for years before 1 (astronomical year 0 is 1 BC)."""
    year, month, day = _civil(days)
    if year <= 0:
        return f"{1 - year:04d}-{month:02d}-{day:02d} BC"
    return f"{year:04d}-{month:02d}-{day:02d}"


def _clock(us: int) -> str:
    seconds, frac = divmod(us, 1_000_000)
    minutes, sec = divmod(seconds, 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours:02d}:{minute:02d}:{sec:02d}.{frac:06d}" if frac else f"{hours:02d}:{minute:02d}:{sec:02d}"


def date_from_days(value: Any) -> str:
    days = _int(value, "a Date")
    special = _DATE_INFINITY.get(days)
    if special is not None:
        return special
    if -100_000_000 < days < 2_932_896:  # years 1..9999 (and a little beyond) via the C fast path
        try:
            return dt.date.fromordinal(_EPOCH_ORDINAL + days).isoformat()
        except (ValueError, OverflowError):
            pass
    return _date_text(days)


def _timestamp_us(us: int) -> str:
    try:
        return (_EPOCH + dt.timedelta(microseconds=us)).isoformat()
    except OverflowError:
        days, rest = divmod(us, _DAY_US)
        date = _date_text(days)
        if date.endswith(" BC"):
            return f"{date[:-3]}T{_clock(rest)} BC"
        return f"{date}T{_clock(rest)}"


def timestamp_from_millis(value: Any) -> str:
    ms = _int(value, "a Timestamp (milliseconds)")
    return _TS_INFINITY_MS.get(ms) or _timestamp_us(ms * 1000)


def timestamp_from_micros(value: Any) -> str:
    us = _int(value, "a MicroTimestamp")
    return _TS_INFINITY_US.get(us) or _timestamp_us(us)


def timestamp_from_nanos(value: Any) -> str:
    ns = _int(value, "a NanoTimestamp")
    special = _TS_INFINITY_NS.get(ns)
    if special is not None:
        return special
    us, ns_rest = divmod(ns, 1000)
    text = _timestamp_us(us)
    if not ns_rest:
        return text
    suffix = " BC" if text.endswith(" BC") else ""
    body = text[: -len(suffix)] if suffix else text
    if "." not in body:
        body += ".000000"
    return f"{body}{ns_rest:03d}{suffix}"  # PostgreSQL rounds the nanoseconds to microseconds


def _time(us: int, what: str) -> str:
    if not 0 <= us <= _DAY_US:  # 24:00:00 is a valid PostgreSQL time
        raise BadValue(f"{what} {us} is outside one day")
    return _clock(us)


def time_from_millis(value: Any) -> str:
    return _time(_int(value, "a Time (milliseconds)") * 1000, "Time")


def time_from_micros(value: Any) -> str:
    return _time(_int(value, "a MicroTime"), "MicroTime")


def time_from_nanos(value: Any) -> str:
    ns = _int(value, "a NanoTime")
    us, rest = divmod(ns, 1000)
    text = _time(us, "NanoTime")
    return text if not rest else f"{text if '.' in text else text + '.000000'}{rest:03d}"


def zoned_timestamp(value: Any) -> str:
    """ISO 8601 with an offset, as Debezium writes it; years outside 1..9999 rewritten the way PostgreSQL reads."""
    text = _str(value, "a ZonedTimestamp")
    first = text[:1]
    if first == "+":
        return text[1:]
    if first == "-" and text[1:2].isdigit():
        year, sep, rest = text[1:].partition("-")
        if not sep or not year.isdigit():
            raise BadValue(f"ZonedTimestamp {text[:40]!r} is not ISO 8601")
        return f"{1 + int(year):04d}-{rest} BC"
    return text


def interval_from_micros(value: Any) -> str:
    return f"{_int(value, 'a MicroDuration')} microseconds"


# ---------------------------------------------------------------- numbers and bytes


def _b64(value: Any, what: str) -> bytes:
    text = _str(value, what)
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        raise BadValue(f"{what} is not valid base64") from None


def decimal_text(unscaled: int, scale: int) -> str:
    """The exact decimal ``unscaled * 10^-scale`` as text, never through a float."""
    if not -_MAX_SCALE <= scale <= _MAX_SCALE:
        raise BadValue(f"decimal scale {scale} is out of range")
    try:
        digits = str(abs(unscaled))
    except ValueError:  # more digits than Python converts (the 4,300-digit guard)
        raise BadValue("decimal has too many digits") from None
    if len(digits) + max(-scale, 0) > _MAX_DIGITS:
        raise BadValue("decimal has too many digits")
    sign = "-" if unscaled < 0 else ""
    if scale <= 0:
        return sign + digits + "0" * -scale if unscaled else "0"
    if len(digits) <= scale:
        digits = "0" * (scale - len(digits) + 1) + digits
    return f"{sign}{digits[:-scale]}.{digits[-scale:]}"


def decimal_from_bytes(value: Any, scale: int) -> str:
    """Connect ``Decimal``: base64 of the big-endian two's-complement unscaled value."""
    raw = _b64(value, "a Decimal")
    if not raw:
        raise BadValue("a Decimal has no bytes")
    return decimal_text(int.from_bytes(raw, "big", signed=True), scale)


def variable_scale_decimal(value: Any) -> str:
    """Debezium ``VariableScaleDecimal``: ``{"scale": s, "value": base64 unscaled}``."""
    if type(value) is not dict:
        raise BadValue(f"a VariableScaleDecimal must be an object with scale and value, got {_kind(value)}")
    return decimal_from_bytes(value.get("value"), _int(value.get("scale"), "VariableScaleDecimal.scale"))


_DECIMAL_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(NaN|Infinity)")


def decimal_maybe_text(value: Any, scale: int) -> str:
    """A numeric column's string without a schema: decimal text (``decimal.handling.mode=string``) or, Debezium's
    default, base64 bytes. A string that is valid base64 is read as bytes, so ``"1234"`` is base64."""
    text = _str(value, "a Decimal")
    try:
        return decimal_from_bytes(text, scale)
    except BadValue:
        if _DECIMAL_TEXT.fullmatch(text):
            return text
        raise


def bytea_hex(value: Any) -> str:
    """``bytea`` (Debezium's default ``binary.handling.mode=bytes``: base64 in JSON) as PostgreSQL hex input."""
    return "\\x" + _b64(value, "a bytes value").hex()


def bits(value: Any, length: int | None) -> str:
    """``io.debezium.data.Bits``: the bit string as an unsigned number in little-endian bytes; ``length`` pads it
    for ``bit(n)`` (for ``bit varying`` the leading zeros are lost on Debezium's side and ``length`` is None)."""
    if type(value) is bool:  # bit(1) arrives as a boolean
        return "1" if value else "0"
    number = int.from_bytes(_b64(value, "a Bits value"), "little")
    text = format(number, "b")
    if length is not None:
        if len(text) > length:
            raise BadValue(f"Bits value has {len(text)} bits, more than its length {length}")
        text = text.rjust(length, "0")
    return text


def point(value: Any) -> str:
    """``io.debezium.data.geometry.Point`` (``{"x", "y", "wkb", "srid"}``) as PostgreSQL ``point`` text."""
    if type(value) is not dict:
        raise BadValue(f"a Point must be an object with x and y, got {_kind(value)}")
    x, y = value.get("x"), value.get("y")
    for v in (x, y):
        if v is None or type(v) in (dict, list, bool):
            raise BadValue("a Point needs numeric x and y")
    return f"({x},{y})"
