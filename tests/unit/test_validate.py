"""Validation against the catalog: unique keys, privileges per mode, columns, required columns, key columns."""

from __future__ import annotations

import pytest

from kapow.config import parse_config
from kapow.contract import Destination
from kapow.errors import ErrorCode
from kapow.postgres.catalog import Column, Table
from kapow.postgres.validate import key_columns, validate

CONFIG = parse_config('[kafka]\nbootstrap_servers = "x:1"\ntopics = ["in"]\n'
                      '[[destinations]]\nvanity = "wh"\ndatabases = ["db"]\n').destinations[0]
LOOSE = parse_config('[kafka]\nbootstrap_servers = "x:1"\ntopics = ["in"]\n'
                     '[[destinations]]\nvanity = "wh"\ndatabases = ["db"]\nallow_no_unique_key = true\n'
                     ).destinations[0]


def table(*, primary: tuple[str, ...] | None = ("id",), unique: tuple[tuple[str, ...], ...] = (("id",),),
          deferrable_only: bool = False, insert: bool = True, update: bool = True, delete: bool = True) -> Table:
    cols = {
        "id": Column("id", "bigint", True, False, False),
        "code": Column("code", "text", True, False, False),
        "name": Column("name", "text", True, False, False),
        "note": Column("note", "text", False, False, False),
        "made": Column("made", "timestamptz", True, True, False),
        "gen": Column("gen", "bigint", False, True, True),
        "v": Column("v", "bigint", False, False, False),
    }
    return Table("public", "t", cols, primary, unique, deferrable_only, insert, update, delete)


def dest(mode: str = "insert", **kw: object) -> Destination:
    return Destination("wh", "db", "t", mode=mode, **kw)  # type: ignore[arg-type]


def code(t: Table, keys: tuple[str, ...], d: Destination | None = None, config: object = CONFIG) -> ErrorCode | None:
    failure = validate(t, config, d or dest(), keys)  # type: ignore[arg-type]
    return None if failure is None else failure.code


def test_insert_rules() -> None:
    t = table()
    assert code(t, ("id", "code", "name")) is None
    assert code(t, ("id", "code", "name", "note", "made")) is None
    assert code(t, ("id", "code")) is ErrorCode.MISSING_COLUMN
    assert code(t, ("id", "code", "name", "nope")) is ErrorCode.UNKNOWN_COLUMN
    assert code(t, ("id", "code", "name", "gen")) is ErrorCode.UNKNOWN_COLUMN  # generated: cannot be set
    assert code(table(insert=False), ("id", "code", "name")) is ErrorCode.FORBIDDEN_DESTINATION


def test_no_unique_key_refused_unless_allowed_and_deferrable_keys_named() -> None:
    none = table(primary=None, unique=())
    assert code(none, ("id", "code", "name")) is ErrorCode.NO_UNIQUE_KEY
    assert code(none, ("id", "code", "name"), config=LOOSE) is None
    deferrable = table(primary=None, unique=(), deferrable_only=True)
    failure = validate(deferrable, CONFIG, dest(), ("id", "code", "name"))
    assert failure is not None and "DEFERRABLE" in failure.message


def test_an_insert_must_give_one_of_the_table_s_unique_keys_unless_allowed() -> None:
    # a hostile run: a bigserial key the packets left out, three kill -9s, 48,013 rows for 48,000 packets (each
    # replay added its rows again under new keys)
    base = table()
    columns = {**base.columns, "id": Column("id", "bigint", True, True, False)}  # bigserial: a default
    serial = Table("public", "t", columns, ("id",), (("id",), ("code", "v")), False, True, True, True)
    failure = validate(serial, CONFIG, dest(), ("code", "name", "note"))
    assert failure is not None and failure.code is ErrorCode.MISSING_KEY
    assert "(id); (code, v)" in failure.message and "replay" in failure.message and "\n" not in failure.message
    assert code(serial, ("code", "name", "v")) is None  # the second unique key is given
    assert code(serial, ("id", "code", "name")) is None
    assert code(serial, ("code", "name", "note"), config=LOOSE) is None  # allowed: replays may duplicate


def test_upsert_and_delete_need_their_key_and_privileges() -> None:
    t = table()
    assert code(t, ("id", "code", "name"), dest("upsert")) is None
    assert code(t, ("code", "name"), dest("upsert")) is ErrorCode.MISSING_KEY
    assert code(t, ("id",), dest("delete")) is None
    assert code(t, ("id", "anything", "else"), dest("delete")) is None  # other columns of a delete are ignored
    assert code(t, ("code",), dest("delete")) is ErrorCode.MISSING_KEY
    assert code(table(update=False), ("id", "code", "name"), dest("upsert")) is ErrorCode.FORBIDDEN_DESTINATION
    assert code(table(delete=False), ("id",), dest("delete")) is ErrorCode.FORBIDDEN_DESTINATION
    assert code(t, ("id", "code", "name"), dest("upsert", version="v")) is ErrorCode.MISSING_KEY
    assert code(t, ("id", "code", "name", "v"), dest("upsert", version="v")) is None
    assert code(t, ("id", "code", "name", "v"), dest("upsert", version="nope")) is ErrorCode.UNKNOWN_COLUMN


def test_key_choice() -> None:
    several = table(primary=None, unique=(("id",), ("code",)))
    assert key_columns(table(), dest("upsert")) == ("id",)
    assert key_columns(table(primary=None, unique=(("code",),)), dest("upsert")) == ("code",)
    chosen = key_columns(several, dest("upsert", key=("code",)))
    assert chosen == ("code",)
    ambiguous = key_columns(several, dest("upsert"))
    assert not isinstance(ambiguous, tuple) and ambiguous.code is ErrorCode.NO_UNIQUE_KEY
    wrong = key_columns(table(), dest("upsert", key=("name",)))
    assert not isinstance(wrong, tuple) and wrong.code is ErrorCode.NO_UNIQUE_KEY


@pytest.mark.parametrize("n", [10, 1000])
def test_verdicts_are_cached_and_bounded(n: int) -> None:
    t = table()
    for i in range(n):
        validate(t, CONFIG, dest(), ("id", "code", "name", f"x{i}"))
    assert len(t.verdicts) <= Table.MAX_DERIVED


def message(t: Table, keys: tuple[str, ...], d: Destination | None = None, config: object = CONFIG) -> str | None:
    failure = validate(t, config, d or dest(), keys)  # type: ignore[arg-type]
    return None if failure is None else failure.message


def test_refusals_tell_the_client_exactly_what_to_fix() -> None:
    """The message is the client's one line (kapow-error-message): it names the columns, singular or plural."""
    t = table()
    assert message(t, ("id", "code")) == "missing required column name (NOT NULL, no default)"
    assert message(t, ("id",)) == "missing required columns code, name (NOT NULL, no default)"
    assert message(t, ("id", "code", "name", "nope")) == "unknown column 'nope' in public.t"
    assert message(t, ("id", "code", "name", "a", "b")) == "unknown columns 'a', 'b' in public.t"
    many = ("id", "code", "name", *(f"x{i}" for i in range(7)))
    assert message(t, many) == "unknown columns 'x0', 'x1', 'x2', 'x3', 'x4' in public.t"
    long = "y" * 70
    assert message(t, ("id", "code", "name", long)) == f"unknown column '{'y' * 63}…' in public.t"
    assert message(t, ("id", "code", "name", "gen")) == ("unknown column 'gen': it is generated by public.t and"
                                                         " cannot be set")
    assert message(table(insert=False), ("id", "code", "name")) == "KaPoW may not insert into public.t"
    assert message(table(insert=False), ("id", "code", "name"), dest("upsert")) == (
        "KaPoW may not insert rows of public.t")
    assert message(table(update=False), ("id", "code", "name"), dest("upsert")) == (
        "KaPoW may not update rows of public.t")
    assert message(table(delete=False), ("id",), dest("delete")) == "KaPoW may not delete rows of public.t"
    assert message(t, ("code", "name"), dest("upsert")) == "upsert needs the key column id of public.t in data"
    pair = table(primary=("id", "code"), unique=(("id", "code"),))
    assert message(pair, ("name",), dest("delete")) == "delete needs the key columns id, code of public.t in data"
    assert message(t, ("id", "code", "name"), dest("upsert", version="v")) == (
        "upsert with a version guard needs v in data")
    assert message(t, ("id", "code", "name", "v"), dest("upsert", version="nope")) == (
        "version column 'nope' is not a column of public.t")
    assert message(table(primary=None, unique=()), ("id", "code", "name")) == (
        "table public.t has no primary key or unique constraint, so replays would duplicate rows; add one (or set"
        " allow_no_unique_key for this destination)")
    assert message(table(primary=None, unique=(), deferrable_only=True), ("id", "code", "name")) == (
        "table public.t has only DEFERRABLE unique constraints, which ON CONFLICT cannot use; make one NOT"
        " DEFERRABLE (or add a primary key)")
    several = table(primary=None, unique=(("id",), ("code",)))
    assert message(several, ("id", "code", "name"), dest("upsert")) == (
        "table public.t has several unique constraints and no primary key: name the one to use with \"key\":"
        " [columns] in the destination")
    assert message(t, ("id", "code", "name"), dest("upsert", key=("name", "note"))) == (
        "table public.t has no non-deferrable unique constraint on (name, note)")
    long_key = tuple(f"c{i:03}" for i in range(60))
    assert message(t, ("id", "code", "name"), dest("upsert", key=long_key)) == (
        "table public.t has no non-deferrable unique constraint on (" + ", ".join(long_key)[:199] + "…)")


def test_a_verdict_is_worked_out_once_per_shape_and_none_is_remembered_too() -> None:
    t = table()
    first = validate(t, CONFIG, dest(), ("id", "code"))
    assert validate(t, CONFIG, dest(), ("id", "code")) is first
    assert len(t.verdicts) == 1
    assert validate(t, CONFIG, dest(), ("id", "code", "name")) is None
    assert list(t.verdicts.values()) == [first, None]
    t.verdicts[(("id", "code", "name"), "insert", None, None, False, None)] = first  # what is cached is answered
    assert validate(t, CONFIG, dest(), ("id", "code", "name")) is first
    assert validate(t, LOOSE, dest(), ("id", "code", "name")) is None, "the config is part of the verdict's key"


def test_a_primary_key_that_is_not_usable_is_not_chosen() -> None:
    odd = table(primary=("id",), unique=(("code",),))  # a primary key that is not (yet) a valid arbiter
    assert key_columns(odd, dest("upsert")) == ("code",)


def test_what_the_caches_hold_is_counted_and_huge_names_are_never_kept() -> None:
    """A review: 64 verdicts keyed by rows of 20,000 names held 83 MB, counted as 20 kB by the catalog's bound."""
    t = table()
    before = t.size()
    huge = ("id", "code", "name", *(f"col_{i:05d}" for i in range(2_000)))  # 18 kB of names: over what is interned
    assert code(t, huge) is ErrorCode.UNKNOWN_COLUMN
    assert not t.verdicts and t.size() == before, "a verdict keyed by 2,000 names was kept"
    names = ("id", "code", "name", "note")
    assert code(t, names) is None and len(t.verdicts) == 1
    assert t.size() - before >= sum(map(len, names)) + 4 * 49
    long = ("id", "code", "name", "é" * 1000)
    code(t, long)
    assert t.size() - before >= 4 * 1000, "a non-ASCII name counts four bytes a character"
    text_before = t.size()
    t.derived(("shape", names), lambda: "INSERT " + "x" * 10_000)
    assert t.size() - text_before >= 10_000


def test_a_catalog_entry_that_grew_makes_room_by_evicting_the_oldest_others() -> None:
    from kapow.contract import TableKey
    from kapow.postgres.catalog import Catalog

    catalog = Catalog(max_bytes=45_000)
    keys = [TableKey("wh", "db", "public", f"t{i}") for i in range(5)]
    for k in keys:
        catalog.put(k, table())
    assert len(catalog) == 5 and catalog.bytes <= 45_000
    grown = catalog.get(keys[1])[1]
    assert grown is not None
    grown.derived(("shape",), lambda: "x" * 40_000)
    catalog.refresh_size(keys[1])
    assert catalog.bytes <= 45_000 and catalog.get(keys[1])[0], "the grown entry stays, others made room"
    assert not catalog.get(keys[0])[0]


def test_a_name_in_the_wrong_case_is_named_with_the_column_meant() -> None:
    """A helper's run: {"ID": ...} was refused as missing_key without a word of the column it gave."""
    t = table()
    missing = message(t, ("ID", "code", "name"))
    assert missing is not None and missing.startswith("insert gives no unique key")
    assert "unknown column 'ID' (names are case-sensitive: did you mean 'id'?)" in missing
    assert message(t, ("id", "Code", "name")) == \
        "unknown column 'Code' in public.t (names are case-sensitive: did you mean 'code'?)"
    assert message(t, ("id", "nope", "name")) == "unknown column 'nope' in public.t"
    upsert = message(t, ("Id", "code", "name"), dest("upsert"))
    assert upsert is not None and "did you mean 'id'?" in upsert
