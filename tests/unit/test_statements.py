"""Statement planning: inserts share statements by shape; upserts and deletes fold per key into ordered rounds.

The property: applying the planned statements, in order, leaves the same table as applying every packet alone,
in offset order; and no statement touches one key twice (PostgreSQL refuses that for ON CONFLICT DO UPDATE).
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kapow.contract import Destination
from kapow.pipeline.unit import order_keys
from kapow.postgres.catalog import Column, Table
from kapow.postgres.statements import DELETE, INSERT, UPSERT, RowIn, Statement, plan, plan_last_wins


def table() -> Table:
    cols = {name: Column(name, "bigint", name == "id", False, False) for name in ("id", "a", "b", "c")}
    return Table("public", "t", cols, ("id",), (("id",),), False, True, True, True)


DEST = {mode: Destination("wh", "db", "t", mode=mode) for mode in (INSERT, UPSERT, DELETE)}


def row(mode: str, data: dict[str, int]) -> RowIn:
    return RowIn(msgspec.json.encode(data), tuple(data), DEST[mode])


def canon(value: Any) -> int:
    """A bigint key as PostgreSQL reads it from JSON: ``2``, ``"2"`` and ``" 2 "`` are one key."""
    return int(str(value).strip())


def apply_one(state: dict[int, dict[str, Any]], kind: str, data: dict[str, Any]) -> int:
    """One element, as PostgreSQL applies it (our model of the three statements); rows changed."""
    key = canon(data["id"])
    data = {**data, "id": key}
    if kind == DELETE:
        return 1 if state.pop(key, None) is not None else 0
    if key not in state:
        state[key] = {"id": key, "a": None, "b": None, "c": None, **data}
        return 1
    if kind == UPSERT:
        state[key].update(data)
        return 1
    return 0


def run_plan(statements: list[Statement]) -> dict[int, dict[str, Any]]:
    state: dict[int, dict[str, Any]] = {}
    for stmt in statements:
        keys = [canon(msgspec.json.decode(e.doc)["id"]) for e in stmt.elements]
        if stmt.kind == UPSERT:
            assert len(keys) == len(set(keys)), "an upsert statement touches one key twice"
        for element in stmt.elements:
            data = msgspec.json.decode(element.doc)
            apply_one(state, stmt.kind, {k: v for k, v in data.items() if k in stmt.columns or k == "id"})
    return state


ops = st.lists(
    st.tuples(st.sampled_from([INSERT, UPSERT, DELETE]), st.integers(0, 3),
              st.fixed_dictionaries({}, optional={"a": st.integers(0, 9), "b": st.integers(0, 9),
                                                  "c": st.integers(0, 9)}),
              st.sampled_from(["number", "number", "string", "spaced", "escaped"])),
    max_size=40,
)


def spelled(mode: str, key: int, cols: dict[str, int], spelling: str) -> RowIn:
    """A row whose bigint key is spelt as a client may: a number, a string, with spaces, with an escape."""
    value: Any = {"number": key, "string": str(key), "spaced": f" {key} ", "escaped": str(key)}[spelling]
    r = row(mode, {"id": value, **cols})
    if spelling == "escaped":
        r = RowIn(r.doc.replace(b'"id":"%d"' % key, b'"id":"\\u003%d"' % key), r.keys, r.dest)
        assert msgspec.json.decode(r.doc)["id"] == str(key)
    return r


@settings(max_examples=500)
@given(ops)
def test_planned_statements_end_like_packets_applied_one_by_one(
        spec: list[tuple[str, int, dict[str, int], str]]) -> None:
    # a key spelt two ways is one key to PostgreSQL: its operations must still take effect in offset order
    rows = [spelled(mode, key, cols, spelling) for mode, key, cols, spelling in spec]
    expected: dict[int, dict[str, Any]] = {}
    for r in rows:
        apply_one(expected, r.dest.mode, msgspec.json.decode(r.doc))
    statements = plan(table(), rows, order_keys(table(), rows)) if rows else []
    assert run_plan(statements) == expected
    sources = sorted(i for s in statements for e in s.elements for i in e.sources)
    assert sources == list(range(len(rows))), "every packet is in exactly one element"


def test_inserts_share_one_statement_per_shape_in_first_seen_order() -> None:
    rows = [row(INSERT, {"id": 1, "a": 1}), row(INSERT, {"id": 2, "b": 1}), row(INSERT, {"id": 3, "a": 2})]
    statements = plan(table(), rows, {})
    assert [(s.columns, len(s.elements)) for s in statements] == [(("id", "a"), 2), (("id", "b"), 1)]
    assert "ON CONFLICT DO NOTHING" in statements[0].text
    assert 'INSERT INTO "public"."t"' in statements[0].text


def test_two_upserts_of_a_key_are_two_rounds_not_merged() -> None:
    # merged, a refused value of the first was never checked, and its other columns landed (a hostile run)
    rows = [row(UPSERT, {"id": 1, "a": 1}), row(UPSERT, {"id": 1, "b": 2})]
    statements = plan(table(), rows, {0: ("id",), 1: ("id",)})
    assert [[e.sources for e in s.elements] for s in statements] == [[[0]], [[1]]]
    assert run_plan(statements) == {1: {"id": 1, "a": 1, "b": 2, "c": None}}


def test_delete_then_upsert_is_two_rounds_in_order() -> None:
    rows = [row(UPSERT, {"id": 1, "a": 1}), row(DELETE, {"id": 1}), row(UPSERT, {"id": 1, "b": 2})]
    statements = plan(table(), rows, {i: ("id",) for i in range(3)})
    assert [s.kind for s in statements] == [UPSERT, DELETE, UPSERT]
    assert run_plan(statements) == {1: {"id": 1, "a": None, "b": 2, "c": None}}


def test_version_guard_is_never_folded_and_guards_the_sql() -> None:
    guarded = Destination("wh", "db", "t", mode=UPSERT, version="c")
    rows = [RowIn(b'{"id":1,"c":5}', ("id", "c"), guarded), RowIn(b'{"id":1,"c":3}', ("id", "c"), guarded)]
    statements = plan(table(), rows, {0: ("id",), 1: ("id",)})
    assert len(statements) == 2
    assert 'WHERE t."c" IS NULL OR t."c" <= EXCLUDED."c"' in statements[0].text
    delete = plan(table(), [RowIn(b'{"id":1,"c":5}', ("id", "c"), Destination("wh", "db", "t", mode=DELETE,
                                                                                   version="c"))], {0: ("id",)})
    assert 'AND (t."c" IS NULL OR t."c" <= r."c")' in delete[0].text


def test_statement_text_is_cached_on_the_table_and_bounded() -> None:
    t = table()
    for i in range(Table.MAX_DERIVED * 3):
        cols = {"id": i, **({"a": 1} if i % 2 else {}), **({"b": 1} if i % 3 else {}), f"x{i}": 1}
        plan(t, [row(INSERT, cols)], {})
    assert len(t.statements) <= Table.MAX_DERIVED


def test_what_is_derived_from_a_table_is_built_once_and_kept_while_there_is_room() -> None:
    t = table()
    built: list[int] = []

    def build(value: int | None, mark: int) -> int | None:
        built.append(mark)
        return value

    assert t.derived(("k", 0), lambda: build(None, 0)) is None  # a None is kept like any value
    assert t.derived(("k", 0), lambda: build(1, 1)) is None and built == [0]
    for i in range(1, Table.MAX_DERIVED * 2):
        assert t.derived(("k", i), lambda i=i: build(i, -1)) == i  # type: ignore[misc]
    assert len(t.statements) == Table.MAX_DERIVED, "full: still answered, no longer kept"
    built.clear()
    assert t.derived(("k", Table.MAX_DERIVED * 3), lambda: build(2, 2)) == 2 and built == [2]


def test_inserts_of_one_key_in_two_shapes_keep_the_first() -> None:
    rows = [row(INSERT, {"id": 2, "b": 1}), row(INSERT, {"id": 1, "a": 1}), row(INSERT, {"id": 1, "b": 5})]
    statements = plan(table(), rows, {i: ("id",) for i in range(3)})
    assert run_plan(statements)[1] == {"id": 1, "a": 1, "b": None, "c": None}


def test_the_sql_of_each_statement_shape() -> None:
    t = table()
    up = Destination("wh", "db", "t", mode=UPSERT)
    assert plan(t, [row(INSERT, {"id": 1, "a": 2})], {})[0].text == (
        'INSERT INTO "public"."t" AS t ("id", "a") SELECT "id", "a" FROM json_populate_recordset(NULL::"public"."t",'
        ' $1::json) ON CONFLICT DO NOTHING')
    (key_only,) = plan(t, [RowIn(b'{"id":1}', ("id",), up)], {0: ("id",)})
    assert key_only.text.endswith(' ON CONFLICT ("id") DO NOTHING'), key_only.text
    versioned = Destination("wh", "db", "t", mode=UPSERT, version="c")
    (guarded,) = plan(t, [RowIn(b'{"id":1,"a":1,"c":2}', ("id", "a", "c"), versioned)], {0: ("id",)})
    assert guarded.text.endswith(' ON CONFLICT ("id") DO UPDATE SET "a" = EXCLUDED."a", "c" = EXCLUDED."c"'
                                 ' WHERE t."c" IS NULL OR t."c" <= EXCLUDED."c"'), guarded.text
    pk = {**table().columns, "a": Column("a", "bigint", True, False, False)}  # a primary key is NOT NULL
    pair = Table("public", "t", pk, ("id", "a"), (("id", "a"),), False, True, True, True)
    (delete,) = plan(pair, [RowIn(b'{"id":1,"a":1}', ("id", "a"), DEST[DELETE])], {0: ("id", "a")})
    # a NOT NULL key still guards a delete: a null given for it would match nothing and count as done
    assert delete.text == ('DELETE FROM "public"."t" AS t USING json_populate_recordset(NULL::"public"."t",'
                           ' $1::json) AS r WHERE t."id" = r."id" AND t."a" = r."a" AND NOT EXISTS (SELECT FROM'
                           ' json_populate_recordset(NULL::"public"."t", $1::json) AS q WHERE NOT CASE WHEN'
                           ' ("q"."id" IS NOT NULL AND "q"."a" IS NOT NULL) THEN true ELSE pg_temp.kapow_refuse('
                           "'delete key (id, a) of public.t holds a null, which matches no row; give the key a value',"
                           " '') END)")
    assert (delete.kind, delete.columns, delete.dest) == (DELETE, (), DEST[DELETE])


def test_a_key_that_may_be_null_is_guarded_in_the_statement_itself() -> None:
    # a unique constraint (not a primary key) on a nullable column: nulls repeat there, so a null key is refused
    t = Table("public", "t", table().columns, ("id",), (("id",), ("a", "b")), False, True, True, True)
    (ins,) = plan(t, [RowIn(b'{"a":1,"b":null}', ("a", "b"), DEST[INSERT])], {})
    guard = ('CASE WHEN ("a" IS NOT NULL AND "b" IS NOT NULL) THEN true ELSE pg_temp.kapow_refuse('
             "'insert''s unique key of public.t holds a null ((a, b)): a replay would add the row again; give the key a"
             " value (or set allow_no_unique_key for this destination)', '') END")
    assert ins.text.endswith(f" WHERE {guard} ON CONFLICT DO NOTHING"), ins.text
    assert ins.plain is not None and ins.plain.endswith(f" WHERE {guard}"), ins.plain
    (loose,) = plan(t, [RowIn(b'{"a":1,"b":null}', ("a", "b"), DEST[INSERT])], {}, nulls_ok=True)
    assert "kapow_refuse" not in loose.text + str(loose.plain) and loose.nulls_ok
    (given,) = plan(t, [RowIn(b'{"id":1,"a":1}', ("id", "a"), DEST[INSERT])], {})  # the primary key is given
    assert "kapow_refuse" not in given.text + str(given.plain)
    by_ab = Destination("wh", "db", "t", mode=DELETE, key=("a", "b"))
    (delete,) = plan(t, [RowIn(b'{"a":1,"b":2}', ("a", "b"), by_ab)], {0: ("a", "b")})
    assert (' WHERE t."a" = r."a" AND t."b" = r."b" AND NOT EXISTS (SELECT FROM json_populate_recordset('
            'NULL::"public"."t", $1::json) AS q WHERE NOT CASE WHEN ("q"."a" IS NOT NULL AND "q"."b" IS NOT NULL)'
            ' THEN true') in delete.text, delete.text
    assert "delete key (a, b) of public.t holds a null" in delete.text


def test_inserts_are_planned_as_inserts_of_their_destination() -> None:
    d = Destination("wh", "db", "t", mode=INSERT, key=("id",))
    (stmt,) = plan(table(), [RowIn(b'{"id":1}', ("id",), d)], {})
    assert (stmt.kind, stmt.columns, stmt.dest, stmt.payload(), stmt.sources) == (INSERT, ("id",), d, '[{"id":1}]', 1)
    assert stmt.elements[0].sources == [0]


def test_folding_keeps_apart_what_a_version_guard_or_another_key_decides() -> None:
    t = table()
    guarded = Destination("wh", "db", "t", mode=UPSERT, version="c")
    plain = DEST[UPSERT]
    rows = [RowIn(b'{"id":1,"c":5}', ("id", "c"), plain), RowIn(b'{"id":1,"c":3}', ("id", "c"), guarded)]
    assert len(plan(t, rows, {0: ("id",), 1: ("id",)})) == 2, "folded into a version-guarded upsert"
    other_key = Destination("wh", "db", "t", mode=UPSERT, key=("id",))
    rows = [RowIn(b'{"id":1,"a":1}', ("id", "a"), plain), RowIn(b'{"id":1,"b":1}', ("id", "b"), other_key)]
    assert len(plan(t, rows, {0: ("id",), 1: ("id",)})) == 2, "folded across destinations naming other keys"


def test_an_upsert_then_a_delete_of_a_key_are_both_applied_and_a_repeated_delete_folds() -> None:
    # folded into the delete, the upsert's values were never checked: a refused one went unreported
    rows = [row(UPSERT, {"id": 1, "a": 1}), row(DELETE, {"id": 1, "b": 2}), row(DELETE, {"id": 1})]
    statements = plan(table(), rows, {i: ("id",) for i in range(3)})
    assert [(s.kind, [e.sources for e in s.elements]) for s in statements] == [(UPSERT, [[0]]), (DELETE, [[1, 2]])]
    guarded = Destination("wh", "db", "t", mode=DELETE, version="c")
    versions = [RowIn(b'{"id":1,"c":3}', ("id", "c"), guarded), RowIn(b'{"id":1,"c":5}', ("id", "c"), guarded)]
    assert len(plan(table(), versions, {0: ("id",), 1: ("id",)})) == 2  # each guarded delete decides alone


def test_rows_of_one_shape_and_destination_keep_the_fast_path() -> None:
    t = table()
    same = [row(INSERT, {"id": 1, "a": 1}), row(INSERT, {"id": 2, "a": 2})]
    assert order_keys(t, same) == {}
    shapes = [row(INSERT, {"id": 1, "a": 1}), row(INSERT, {"id": 2, "b": 2})]
    assert order_keys(t, shapes) == {0: ("id",), 1: ("id",)}
    other = Destination("wh", "db", "t", key=("id",))
    dests = [row(INSERT, {"id": 1}), RowIn(b'{"id":2}', ("id",), other)]
    assert order_keys(t, dests) == {0: ("id",), 1: ("id",)}
    keyless = [row(UPSERT, {"id": 1}), row(UPSERT, {"a": 1})]
    assert order_keys(t, keyless) == {0: ("id",)}, "a row without its key has no place in the key order"
    no_key = Table("public", "t", t.columns, None, (), False, True, True, True)
    assert order_keys(no_key, [row(UPSERT, {"id": 1})]) == {}


def test_an_insert_without_its_key_in_a_mixed_table_is_planned_alone_and_the_rest_still_are() -> None:
    rows = [row(UPSERT, {"id": 1, "a": 1}), RowIn(b'{"a":5}', ("a",), DEST[INSERT]), row(UPSERT, {"id": 2, "a": 2})]
    statements = plan(table(), rows, order_keys(table(), rows))
    assert sorted(i for s in statements for e in s.elements for i in e.sources) == [0, 1, 2]
    assert [s.kind for s in statements] == [UPSERT, INSERT]


def test_upserts_of_one_shape_are_one_statement_that_postgresql_folds_and_others_are_not() -> None:
    t = table()
    rows = [row(UPSERT, {"id": i % 3, "a": i}) for i in range(9)]
    (stmt,) = plan_last_wins(t, rows, ("id",)) or []
    assert stmt.lands_all and stmt.kind == UPSERT and [e.sources for e in stmt.elements] == [[i] for i in range(9)]
    assert stmt.text == ('INSERT INTO "public"."t" AS t ("id", "a") SELECT DISTINCT ON (r."id") "id", "a" FROM'
                         ' json_populate_recordset(NULL::"public"."t", $1::json) WITH ORDINALITY AS r'
                         ' ORDER BY r."id", r.ordinality DESC ON CONFLICT ("id") DO UPDATE SET "a" = EXCLUDED."a"')
    guarded = Destination("wh", "db", "t", mode=UPSERT, version="b")
    refused = {
        "two shapes": [*rows, row(UPSERT, {"id": 1, "b": 2})],
        "an insert among them": [*rows, row(INSERT, {"id": 1, "a": 2})],
        "the key alone: nothing to update": [row(UPSERT, {"id": 1})],
        "no key given": [row(UPSERT, {"a": 1})],
        "a version guard": [RowIn(b'{"id": 1, "a": 1, "b": 2}', ("id", "a", "b"), guarded)],
        "inserts": [row(INSERT, {"id": 1, "a": 2})],
    }
    assert {why: plan_last_wins(t, rs, ("id",)) for why, rs in refused.items()} == dict.fromkeys(refused)
    with_ordinality = Table("public", "t", {**t.columns, "ordinality": Column("ordinality", "int", False, False,
                                                                              False)},
                            ("id",), (("id",),), False, True, True, True)
    assert plan_last_wins(with_ordinality, rows, ("id",)) is None


def _copyable(docs: list[bytes], *, shape_read: bool = True) -> Statement:
    """An insert statement of ``docs`` (one shape), values decoded as kapow.keyshapes does when ``shape_read``."""
    from kapow.contract import PacketDecoder

    decoder = PacketDecoder(max_bytes=1 << 20, max_depth=8, max_destinations=4)
    rows = []
    for doc in docs:
        keys = decoder.keys(doc)
        rows.append(RowIn(doc, keys, Destination("wh", "db", "t"), decoder.values if shape_read else None))
    (stmt,) = plan(table(), rows, {})
    return stmt


def test_a_copy_payload_is_csv_of_the_decoded_values_with_null_as_the_null_marker() -> None:
    docs = [b'{"id": 1, "a": "x,y", "b": null}', b'{"id": 2, "a": "null", "b": true}',
            b'{"id":3,"a":"","b":"\xc3\xa9"}', b'{"id": 4, "a": "\\u00e9", "b": -7}']
    for shape_read in (True, False):
        stmt = _copyable(docs, shape_read=shape_read)
        assert stmt.columns == ("id", "a", "b")
        assert stmt.copy_payload() == (b'1,"x,y",null\n2,"null",true\n3,"","\xc3\xa9"\n4,"\xc3\xa9",-7\n'), shape_read


def test_a_copy_payload_is_refused_for_what_csv_cannot_carry_exactly() -> None:
    for odd in (b'"say \\"hi\\""', b'"back\\\\slash"', b'"two\\nlines"', b'"bell\\u0007"', b"1.10", b"1e400", b"[1]"):
        docs = [b'{"id": 1, "a": 2}', b'{"id": 2, "a": ' + odd + b"}", b'{"id": 3, "a": 4}']
        for shape_read in (True, False):
            assert _copyable(docs, shape_read=shape_read).copy_payload() is None, (odd, shape_read)
    upsert = Statement(UPSERT, ("id",), Destination("wh", "db", "t", mode="upsert"), "x")
    assert upsert.copy_payload() is None


def test_a_negative_zero_in_any_column_refuses_the_copy_and_a_zero_does_not() -> None:
    """msgspec reads -0 as 0, which the CSV would send as '0': a -0 anywhere (first, middle, last, only column;
    first row or last) must keep the JSON statement, and a plain 0 there must not cost the COPY."""
    for width in (1, 3):
        names = [f"c{i}" for i in range(width)]
        for column in range(width):
            for row in (0, 2):
                for zero, copies in ((b"-0", False), (b"0", True), (b" -0 ", False)):
                    docs = []
                    for r in range(3):
                        values = [zero if (r, i) == (row, column) else b"%d" % (r * 10 + i + 1) for i in range(width)]
                        pairs = zip(names, values, strict=True)
                        docs.append(b"{" + b",".join(b'"%s":%s' % (n.encode(), v) for n, v in pairs) + b"}")
                    for shape_read in (True, False):
                        payload = _copyable(docs, shape_read=shape_read).copy_payload()
                        assert (payload is not None) is copies, (width, column, row, zero, shape_read)


def test_a_large_row_without_values_sends_its_statement_as_json() -> None:
    """The sort keeps no values for a packet over 64 kB (memory): the COPY must not build them anyway."""
    from kapow.postgres.statements import COPY_DECODE_MAX_BYTES

    big = b'{"id": 2, "a": "' + b"x" * COPY_DECODE_MAX_BYTES + b'"}'
    docs = [b'{"id": 1, "a": "y"}', big, b'{"id": 3, "a": "z"}']
    assert _copyable(docs, shape_read=False).copy_payload() is None
    assert _copyable(docs[:1] + docs[2:], shape_read=False).copy_payload() == b'1,"y"\n3,"z"\n'


@pytest.mark.parametrize(("sql_type", "first", "second"), [
    ("numeric(12,2)", b"1", b"1.0"), ("numeric", b"2", b'"2e0"'), ("integer", b'"7"', b'" 7 "'),
    ("bigint", b"-0", b"0"), ("text", b'"abc"', b'"ab\\u0063"'), ("character varying(10)", b'"x"', b'"\\u0078"'),
    ("character(5)", b'"ab"', b'"ab   "'), ("citext", b'"Ab"', b'"aB"'),
    ("uuid", b'"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"', b'"{A0EEBC999C0B4EF8BB6D6BB9BD380A11}"'),
    ("boolean", b"true", b'"yes"'), ("text", b"12", b'"12"'),
])
def test_one_key_spelt_two_ways_keeps_its_order(sql_type: str, first: bytes, second: bytes) -> None:
    # the same key to PostgreSQL, in two JSON texts: the delete must come after the upsert, and the second upsert
    # after the delete (one round each), never in one round where the statements' order would decide
    cols = {"k": Column("k", sql_type, True, False, False), "v": Column("v", "text", False, False, False)}
    t = Table("public", "t", cols, ("k",), (("k",),), False, True, True, True)
    rows = [RowIn(b'{"k":%s,"v":"a"}' % first, ("k", "v"), DEST[UPSERT]), RowIn(b'{"k":%s}' % second, ("k",),
                                                                                  DEST[DELETE]),
            RowIn(b'{"k":%s,"v":"b"}' % first, ("k", "v"), DEST[UPSERT])]
    statements = plan(t, rows, {i: ("k",) for i in range(3)})
    assert [(s.kind, [e.sources for e in s.elements]) for s in statements] == [
        (UPSERT, [[0]]), (DELETE, [[1]]), (UPSERT, [[2]])]


@pytest.mark.parametrize(("sql_type", "first", "second", "other"), [
    ("numeric(6,2)", b'"1.001"', b'"1.004"', b"2"), ("numeric(6,2)", b"1.005", b'"1.01"', b"2"),
    ("double precision", b'"0.10000000000000001"', b"0.1", b"2"), ("real", b"0.1", b'"0.100000001"', b"2"),
    ("character varying(3)", b'"abc   "', b'"abc"', b'"x"'), ("boolean", b'"tru"', b"true", b"false"),
    ("boolean", b'"of"', b"false", b"true"), ("citext", b'"\\u0130"', b'"i"', b'"x"'),
])
def test_a_delete_before_an_upsert_of_one_key_spelt_two_ways_runs_first(sql_type: str, first: bytes, second: bytes,
                                                                          other: bytes) -> None:
    """An upsert of another key, a delete, then an upsert of the delete's key spelt another way that PostgreSQL
    takes for the same value (a hostile run: numeric(6,2) rounds 1.001 and 1.004 to 1.00; a varchar(3) drops
    trailing spaces; "tru" is true; citext folds as the database does): two classes put the second upsert in the
    first upsert's statement, which ran before the delete, and the row was gone."""
    cols = {"k": Column("k", sql_type, True, False, False), "v": Column("v", "text", False, False, False)}
    t = Table("public", "t", cols, ("k",), (("k",),), False, True, True, True)
    rows = [RowIn(b'{"k":%s,"v":"o"}' % other, ("k", "v"), DEST[UPSERT]),
            RowIn(b'{"k":%s}' % second, ("k",), DEST[DELETE]),
            RowIn(b'{"k":%s,"v":"new"}' % first, ("k", "v"), DEST[UPSERT])]
    statements = plan(t, rows, {i: ("k",) for i in range(3)})
    order = [i for s in statements for e in s.elements for i in e.sources]
    assert order.index(1) < order.index(2), [(s.kind, [e.sources for e in s.elements]) for s in statements]


def test_keys_of_other_values_still_share_their_rounds() -> None:
    cols = {"k": Column("k", "numeric", True, False, False), "v": Column("v", "text", False, False, False)}
    t = Table("public", "t", cols, ("k",), (("k",),), False, True, True, True)
    huge = b"9" * 5000  # more digits than int() reads: compared as a decimal, never an error
    rows = [RowIn(b'{"k":%s,"v":"a"}' % k, ("k", "v"), DEST[UPSERT]) for k in (b"1", b"1.5", b'"x"', huge)]
    rows += [RowIn(b'{"k":%s}' % k, ("k",), DEST[DELETE]) for k in (b"2", b'"NaN"', b'"Infinity"', b'"9' + huge + b'"')]
    statements = plan(t, rows, {i: ("k",) for i in range(len(rows))})
    assert [s.kind for s in statements] == [UPSERT, DELETE], "one round: no key is another's"


def test_rows_keyed_by_two_unique_keys_take_effect_in_offset_order() -> None:
    # a delete by one unique key and an upsert by another may touch one row: neither may overtake the other
    cols = {c: Column(c, t, c == "id", False, False) for c, t in (("id", "bigint"), ("email", "text"), ("v", "text"))}
    t = Table("public", "t", cols, ("id",), (("id",), ("email",)), False, True, True, True)
    by_email = Destination("wh", "db", "t", mode=DELETE, key=("email",))
    rows = [RowIn(b'{"id":9,"email":"z","v":"a"}', ("id", "email", "v"), DEST[UPSERT]),
            RowIn(b'{"email":"e1"}', ("email",), by_email),
            RowIn(b'{"id":1,"email":"e1","v":"new"}', ("id", "email", "v"), DEST[UPSERT])]
    statements = plan(t, rows, {0: ("id",), 1: ("email",), 2: ("id",)})
    assert [[i for e in s.elements for i in e.sources] for s in statements] == [[0], [1], [2]]


def test_a_table_of_two_unique_keys_is_planned_in_offset_order_runs() -> None:
    # rows of different ids interact through the other key: nothing folded or reordered; consecutive rows of one
    # operation and shape share a statement, and an upsert run is cut where its key comes again
    t = Table("public", "t", table().columns, ("id",), (("id",), ("a",)), False, True, True, True)
    rows = [row(INSERT, {"id": 1, "a": 1}), row(INSERT, {"id": 2, "a": 2}), row(DELETE, {"id": 1}),
            row(INSERT, {"id": 1, "a": 2}), row(UPSERT, {"id": 3, "a": 3}), row(UPSERT, {"id": 4, "a": 4}),
            row(UPSERT, {"id": "3", "a": 5}), row(UPSERT, {"id": 5, "a": 6})]
    keys_of = {i: ("id",) for i in range(len(rows))}
    statements = plan(t, rows, keys_of)
    assert [(s.kind, [e.sources for e in s.elements]) for s in statements] == [
        (INSERT, [[0], [1]]), (DELETE, [[2]]), (INSERT, [[3]]), (UPSERT, [[4], [5]]), (UPSERT, [[6], [7]])]
    assert all(s.plain is not None for s in statements if s.kind == INSERT)
    one_key = plan(table(), rows, keys_of)  # one unique key: rounds per key, folded (1's insert-delete-insert)
    assert [s.kind for s in one_key] != [s.kind for s in statements]


def test_a_delete_s_document_keeps_only_its_key_and_version_as_written() -> None:
    from kapow.postgres.statements import key_doc

    doc = b'{"id": 1, "x": "\\u0000", "rev": 2.50, "n": [1]}'
    assert key_doc(doc, ("id",), "rev") == b'{"id":1,"rev":2.50}'  # values as the client wrote them
    assert key_doc(doc, ("id",), None) == b'{"id":1}'
    assert key_doc(b'{"id": 1}', ("id",), None) == b'{"id": 1}'  # nothing to drop: the document itself
    assert key_doc(b'{"x": 1}', ("id",), None) == b'{}'  # no key given: the null guard refuses it
    assert key_doc(b"not json", ("id",), None) == b"not json"


@pytest.mark.parametrize("sql_type", ["numeric(6,2)[]", "character varying(3)[]", "integer[]", "citext"])
def test_a_key_of_an_array_or_citext_type_is_planned_in_offset_order(sql_type: str) -> None:
    """Key classes read format_type's spellings: an array of numeric(6,2) or varchar(3) is no such type (its
    length was read as a number and the plan failed), and two spellings of one array may be one value: such keys,
    and citext's, keep their order, whatever their texts."""
    cols = {"k": Column("k", sql_type, True, False, False), "v": Column("v", "text", False, False, False)}
    t = Table("public", "t", cols, ("k",), (("k",),), False, True, True, True)
    rows = [RowIn(b'{"k":["a"],"v":"o"}', ("k", "v"), DEST[UPSERT]), RowIn(b'{"k":[ "b" ]}', ("k",), DEST[DELETE]),
            RowIn(b'{"k":["b"],"v":"new"}', ("k", "v"), DEST[UPSERT])]
    statements = plan(t, rows, {i: ("k",) for i in range(3)})
    order = [i for s in statements for e in s.elements for i in e.sources]
    assert order.index(1) < order.index(2), [(s.kind, [e.sources for e in s.elements]) for s in statements]
