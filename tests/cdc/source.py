"""A source table with a column of every common PostgreSQL type Debezium captures by default, edge values for
each, and the SQL that proves a copy equal to it.

What is left out, and why (measured with Debezium 3.6.1): ``name`` (streamed as null), ``numeric`` NaN (captured
as null), ``bit varying`` (the Bits encoding drops leading zeros), json/jsonb holding JSON ``null`` (lands as SQL
NULL through json_populate_recordset), timestamps past ~292,000 AD (Debezium's int64 microseconds overflow), and
dates before 1582 in the *snapshot* (read through java.sql.Date, Julian calendar, BC lost); they are streamed
correctly, so the streamed rows carry them (but not inside arrays, where the stream loses BC too). Intervals are
exact only with ``interval.handling.mode=string``: MicroDuration counts a month as 30.4375 days and is computed
in double precision (``49 days 01:00:00.000049`` arrives one microsecond short), so the default mode gets
whole-second intervals under 2^53 microseconds, and ``months=True`` rows (months, microseconds) need the string
mode.
"""

from __future__ import annotations

import os
from typing import Any

import psycopg
from psycopg import sql

# column -> type. The order is the table's; every column but id is nullable.
COLUMNS: dict[str, str] = {
    "id": "bigint PRIMARY KEY",
    "c_smallint": "smallint",
    "c_integer": "integer",
    "c_bigint": "bigint",
    "c_numeric": "numeric(20,5)",
    "c_numeric_any": "numeric",
    "c_real": "real",
    "c_double": "double precision",
    "c_boolean": "boolean",
    "c_text": "text",
    "c_varchar": "varchar(20)",
    "c_char": "char(5)",
    "c_date": "date",
    "c_time": "time",
    "c_time3": "time(3)",
    "c_timetz": "timetz",
    "c_timestamp": "timestamp",
    "c_timestamp3": "timestamp(3)",
    "c_timestamptz": "timestamptz",
    "c_interval": "interval",
    "c_uuid": "uuid",
    "c_json": "json",
    "c_jsonb": "jsonb",
    "c_bytea": "bytea",
    "c_int_array": "int[]",
    "c_text_array": "text[]",
    "c_numeric_array": "numeric[]",
    "c_date_array": "date[]",
    "c_inet": "inet",
    "c_cidr": "cidr",
    "c_macaddr": "macaddr",
    "c_enum": "cdc_mood",
    "c_money": "money",
    "c_bit": "bit(8)",
    "c_bit1": "bit(1)",
    "c_xml": "xml",
    "c_point": "point",
    "c_range": "int4range",
    "c_big": "text",
}

# How each column is compared: types without an equality operator as text; timetz at UTC (Debezium sends it
# normalised to UTC, the same instant of the day).
_COMPARE = {"c_json": "{}::text", "c_xml": "{}::text", "c_point": "{}::text", "c_timetz": "{} AT TIME ZONE 'UTC'"}

ENUM_DDL = "CREATE TYPE cdc_mood AS ENUM ('sad', 'ok', 'happy', 'ünïcödé 😀')"

ALL_BYTES = "\\x" + bytes(range(256)).hex()
UNICODE = "😀 ünïcödé 漢字 \t\n \"quoted\" \\ back\\slash ' single"

EDGE_ROWS: list[dict[str, Any]] = [
    {"id": 1},  # every column NULL
    {  # minimums and empties
        "id": 2, "c_smallint": "-32768", "c_integer": "-2147483648", "c_bigint": "-9223372036854775808",
        "c_numeric": "-999999999999999.99999", "c_numeric_any": "-123456789012345678901234567890.123456789012345678901",
        "c_real": "-3.4028235e38", "c_double": "-1.7976931348623157e308", "c_boolean": "false", "c_text": "",
        "c_varchar": "", "c_char": "", "c_date": "1600-01-01", "c_time": "00:00:00", "c_time3": "00:00:00",
        "c_timetz": "00:00:00+14:59", "c_timestamp": "1600-01-01 00:00:00", "c_timestamp3": "1600-01-01 00:00:00",
        "c_timestamptz": "1600-01-01 00:00:00+00", "c_interval": "-10000 days -23:59:59",
        "c_uuid": "00000000-0000-0000-0000-000000000000", "c_json": "[]", "c_jsonb": "{}", "c_bytea": "\\x",
        "c_int_array": "{}", "c_text_array": "{}", "c_numeric_array": "{}", "c_date_array": "{}",
        "c_inet": "0.0.0.0", "c_cidr": "0.0.0.0/0", "c_macaddr": "00:00:00:00:00:00", "c_enum": "sad",
        "c_money": "-92233720368547758.08", "c_bit": "00000000", "c_bit1": "0", "c_xml": "", "c_point": "(0,0)",
        "c_range": "empty",
    },
    {  # maximums, Unicode, far dates
        "id": 3, "c_smallint": "32767", "c_integer": "2147483647", "c_bigint": "9223372036854775807",
        "c_numeric": "999999999999999.99999", "c_numeric_any": "0.000000000000000000000000000000000000000000000001",
        "c_real": "3.4028235e38", "c_double": "1.7976931348623157e308", "c_boolean": "true", "c_text": UNICODE,
        "c_varchar": "ü" * 20, "c_char": "ab", "c_date": "5874897-12-31", "c_time": "24:00:00",
        "c_time3": "23:59:59.999", "c_timetz": "23:59:59.999999-14:59", "c_timestamp": "100000-01-01 00:00:00",
        "c_timestamp3": "9999-12-31 23:59:59.999", "c_timestamptz": "100000-01-01 00:00:00+00",
        "c_interval": "10000 days 23:59:59", "c_uuid": "ffffffff-ffff-ffff-ffff-ffffffffffff",
        "c_json": '{"b": 1,  "a": [1, 2.50, {"c": null}], "ü": "😀", "big": 123456789012345678901234567890}',
        "c_jsonb": '{"a": [1, 2, {"b": null}], "ü": "😀", "n": 1.0e-5}', "c_bytea": ALL_BYTES,
        "c_int_array": "{2147483647,-2147483648,NULL}", "c_text_array": '{"a b","c,d",NULL,"\\"","","😀"}',
        "c_numeric_array": "{1.5,-0.00001,NULL,123456789012345678901234567890}",
        "c_date_array": "{2000-02-29,NULL,1970-01-01}", "c_inet": "2001:db8::1/64", "c_cidr": "2001:db8::/32",
        "c_macaddr": "ff:ff:ff:ff:ff:ff", "c_enum": "ünïcödé 😀", "c_money": "92233720368547758.07",
        "c_bit": "11111111", "c_bit1": "1", "c_xml": '<a b="c">ü &amp; 😀</a>', "c_point": "(-1.5e300,2.25)",
        "c_range": "[1,10)",
    },
    {  # specials
        "id": 4, "c_real": "NaN", "c_double": "-Infinity", "c_numeric_any": "0", "c_date": "infinity",
        "c_timestamp": "-infinity", "c_timestamp3": "infinity", "c_timestamptz": "infinity",
        "c_text": "tab\there\nnewline \\N \\x00 %s {} []", "c_time": "00:00:00.000001",
    },
    {  # near the epoch, fractions
        "id": 5, "c_date": "1969-12-31", "c_timestamp": "1969-12-31 23:59:59.999999",
        "c_timestamptz": "1970-01-01 00:00:00.000001+05:30", "c_timestamp3": "1970-01-01 00:00:00.001",
        "c_real": "1.17549435e-38", "c_double": "4.9e-324", "c_numeric": "-0.00001", "c_numeric_any": "-1e-30",
        "c_interval": "00:00:00.000001", "c_timetz": "12:34:56.789+05:30", "c_money": "0.01",
    },
]
# Values only the stream gets right (see the module docstring): inserted after the snapshot.
STREAMED_ROWS: list[dict[str, Any]] = [
    {"id": 100_001, "c_date": "0044-03-15 BC", "c_timestamp": "0044-03-15 10:00:00.5 BC",
     "c_timestamptz": "4713-11-24 00:00:00+00 BC", "c_date_array": "{0500-06-01,1582-10-15}"},
    {"id": 100_002, "c_date": "0500-06-01", "c_timestamp": "1000-02-28 12:00:00.000001", "c_text": UNICODE},
]

MONTH_INTERVALS = ["1 year 2 mons 3 days", "-7 mons -1 days", "178000000 years"]


def big_text(seed: int, size: int = 12_000) -> str:
    """Incompressible text, so that PostgreSQL stores it out of line (TOAST) and an UPDATE that does not touch
    it makes Debezium send its placeholder instead of the value."""
    return os.urandom(size // 2).hex() + str(seed)


def bulk_row(i: int, *, months: bool) -> dict[str, Any]:
    """An ordinary row, different for every ``i``."""
    return {
        "id": i, "c_smallint": str(i % 32768), "c_integer": str(i * 7), "c_bigint": str(i * 1_000_000_007),
        "c_numeric": f"{i}.{i % 100000:05d}", "c_numeric_any": f"{i}.{i}e-{i % 20}", "c_real": f"{i}.25",
        "c_double": f"{i}.125", "c_boolean": "true" if i % 2 else "false", "c_text": f"row {i} ✓",
        "c_varchar": f"v{i}", "c_char": f"c{i % 1000}", "c_date": f"20{i % 100:02d}-0{1 + i % 9}-1{i % 10}",
        "c_time": f"1{i % 10}:2{i % 10}:3{i % 10}.{i % 1000000:06d}", "c_time3": f"0{i % 10}:00:00.{i % 1000:03d}",
        "c_timetz": f"0{i % 10}:30:00+0{i % 5}:00", "c_timestamp": f"2026-11-2{i % 10} 10:00:00.{i % 1000000:06d}",
        "c_timestamp3": f"2026-11-2{i % 10} 10:00:00.{i % 1000:03d}",
        "c_timestamptz": f"2026-11-2{i % 10} 10:00:00.{i % 1000000:06d}+01",
        "c_interval": (f"{MONTH_INTERVALS[i % 3]} {i}.{i % 1000000:06d} seconds" if months
                       else f"{i} days {i % 24}:00:00"),
        "c_uuid": f"{i:08x}-0000-4000-8000-000000000000", "c_json": f'{{"i": {i}, "s": "x{i}"}}',
        "c_jsonb": f'{{"i": {i}, "tags": ["a", "b"]}}', "c_bytea": "\\x" + i.to_bytes(4, "big").hex(),
        "c_int_array": f"{{{i},{i + 1}}}", "c_text_array": f'{{"t{i}","u"}}', "c_numeric_array": f"{{{i}.5}}",
        "c_date_array": "{2026-01-01}", "c_inet": f"10.0.{i % 256}.{i % 200}", "c_cidr": f"10.{i % 256}.0.0/16",
        "c_macaddr": f"08:00:2b:01:02:{i % 256:02x}", "c_enum": ["sad", "ok", "happy"][i % 3],
        "c_money": f"{i}.{i % 100:02d}", "c_bit": format(i % 256, "08b"), "c_bit1": str(i % 2),
        "c_xml": f"<r>{i}</r>", "c_point": f"({i},{-i}.5)", "c_range": f"[{i},{i + 10})",
    }


def create_table(conn: psycopg.Connection[Any], table: str) -> None:
    cols = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t)) for c, t in COLUMNS.items())
    conn.execute(sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(table), cols))


def create_source(conn: psycopg.Connection[Any], table: str) -> None:
    """The enum type and the source table (run once per database)."""
    conn.execute(ENUM_DDL)
    create_table(conn, table)


def insert(conn: psycopg.Connection[Any], table: str, rows: list[dict[str, Any]]) -> None:
    """Insert rows given as PostgreSQL input text (so that every edge value is exactly what the SQL literal says)."""
    for row in rows:
        names = list(row)
        query = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, names)),
            sql.SQL(", ").join(sql.SQL("{}::{}").format(sql.Placeholder(), sql.SQL(_cast(n))) for n in names))
        conn.execute(query, [row[n] for n in names])


def _cast(column: str) -> str:
    return COLUMNS[column].replace(" PRIMARY KEY", "")


def compare_sql(left: str, right: str) -> sql.Composed:
    """Rows of one table missing from the other, both ways, every column compared (no row when they are equal);
    the first column names the table a row is missing from."""
    exprs = sql.SQL(", ").join(sql.SQL(_COMPARE.get(c, "{}")).format(sql.Identifier(c)) for c in COLUMNS)

    def minus(a: str, b: str) -> sql.Composed:
        return sql.SQL("SELECT {b_name} AS missing_from, {exprs} FROM {a} EXCEPT ALL "
                       "SELECT {b_name}, {exprs} FROM {b}").format(
            b_name=sql.Literal(b), exprs=exprs, a=sql.Identifier(a), b=sql.Identifier(b))

    return sql.SQL("({}) UNION ALL ({})").format(minus(left, right), minus(right, left))


def column_types(conn: psycopg.Connection[Any], table: str) -> dict[str, str]:
    """column -> type as ``format_type()`` spells it: what the writer's catalog gives the decoder."""
    rows = conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped", (table,)).fetchall()
    return {name: pg_type for name, pg_type in rows}


def differences(conn: psycopg.Connection[Any], left: str, right: str) -> list[str]:
    """Where the two tables differ, one line per differing column of a row (``id column: left | right``), or a row
    missing from one side; empty when they are equal. Values are shown as text (Python cannot load every edge
    value, e.g. year 5874897)."""
    query = sql.SQL("SELECT DISTINCT (d).id FROM ({}) d").format(compare_sql(left, right))
    ids = [row[0] for row in conn.execute(query).fetchall()]
    out: list[str] = []
    for ident in sorted(ids):
        sides = []
        for table in (left, right):
            texts = sql.SQL(", ").join(
                sql.SQL(_COMPARE.get(c, "{}") + "::text").format(sql.Identifier(c)) for c in COLUMNS)
            found = conn.execute(sql.SQL("SELECT {} FROM {} WHERE id = %s").format(texts, sql.Identifier(table)),
                                 (ident,)).fetchone()
            sides.append(found)
        if sides[0] is None or sides[1] is None:
            out.append(f"{ident}: only in {left if sides[1] is None else right}")
            continue
        out += [f"{ident} {c}: {a!r} | {b!r}" for c, a, b in zip(COLUMNS, sides[0], sides[1], strict=True) if a != b]
    return out
