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
