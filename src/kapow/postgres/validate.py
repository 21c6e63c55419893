"""Validation of rows against their table, in one place, beside the catalog it reads.

A row is checked for what the table itself can tell us before anything is written: the table has a unique key
the write can rely on, the writer may do what the mode asks, every column named exists and may be set, every
required column is there, and (for upsert and delete) the key columns are given. The verdict depends only on the
table, the destination's options and the row's set of keys, which repeat from packet to packet, so it is cached
on the :class:`~kapow.postgres.catalog.Table` entry, one dict lookup per row on the hot path.

Values are not checked here, on purpose: PostgreSQL's own input functions check them in the batch, in C, and a
row they refuse is isolated by the writer (:mod:`kapow.postgres.isolate`), which then names the column and its
type. A Python check per value would cost every packet to spare the rare bad one.
"""

from __future__ import annotations

from kapow.config import DestinationConfig
from kapow.contract import INTERNED_NAMES_BYTES, Destination, shorten
from kapow.errors import ErrorCode, Failure
from kapow.postgres.catalog import Table, rough_bytes


def key_columns(table: Table, dest: Destination) -> tuple[str, ...] | Failure:
    """The unique key a write of ``dest``'s mode relies on: ``dest.key``, else the primary key, else the only one."""
    if dest.key is not None:
        wanted = set(dest.key)
        for key in table.unique_keys:
            if set(key) == wanted:
                return key
        return Failure(ErrorCode.NO_UNIQUE_KEY,
                       f"table {table.schema}.{table.name} has no non-deferrable unique constraint on "
                       f"({shorten(', '.join(dest.key), 200)})")
    if table.primary_key is not None and table.primary_key in table.unique_keys:
        return table.primary_key
    if len(table.unique_keys) == 1:
        return table.unique_keys[0]
    if not table.unique_keys:
        return _no_unique_key(table)
    return Failure(ErrorCode.NO_UNIQUE_KEY,
                   f"table {table.schema}.{table.name} has several unique constraints and no primary key: name the"
                   " one to use with \"key\": [columns] in the destination")


def _no_unique_key(table: Table) -> Failure:
    if table.deferrable_only:
        return Failure(ErrorCode.NO_UNIQUE_KEY,
                       f"table {table.schema}.{table.name} has only DEFERRABLE unique constraints, which ON CONFLICT"
                       " cannot use; make one NOT DEFERRABLE (or add a primary key)")
    return Failure(ErrorCode.NO_UNIQUE_KEY,
                   f"table {table.schema}.{table.name} has no primary key or unique constraint, so replays would"
                   " duplicate rows; add one (or set allow_no_unique_key for this destination)")


def validate(table: Table, config: DestinationConfig, dest: Destination, keys: tuple[str, ...]) -> Failure | None:
    """Check one row (its column names ``keys``) for ``dest`` against ``table``; ``None`` when it may be written.

    The columns ``dest.metadata`` fills from the record count as the row's: they must be columns of the table
    (a metadata column naming ``ctid`` or no column at all failed the whole statement, and every good row of the
    table's batch with it: a hostile run), and they may give its key."""
    cache_key = (keys, dest.mode, dest.key, dest.version, config.allow_no_unique_key, dest.metadata)
    verdicts = table.verdicts
    if cache_key in verdicts:
        verdict: Failure | None = verdicts[cache_key]
        return verdict
    meta = dest.metadata
    verdict = _check(table, config, dest, keys if meta is None else keys + tuple(
        column for _field, column in meta.columns() if column not in keys))
    # names too long to be interned (a hostile row of 20,000 columns) are checked each time, never kept
    if len(verdicts) < table.MAX_DERIVED and sum(map(len, keys)) <= INTERNED_NAMES_BYTES:
        verdicts[cache_key] = verdict
        table.derived_bytes += rough_bytes(cache_key) + (rough_bytes(verdict.message) if verdict else 0)
    return verdict


def _check(table: Table, config: DestinationConfig, dest: Destination, keys: tuple[str, ...]) -> Failure | None:
    where = f"{table.schema}.{table.name}"
    mode = dest.mode
    if mode == "insert":
        if not config.allow_no_unique_key:
            if not table.has_unique_key:
                return _no_unique_key(table)
            if not any(all(c in keys for c in key) for key in table.unique_keys):
                # a key the table generates (serial, identity, a default): a replay after a crash would insert the
                # row again under a new key, so the insert would not be idempotent
                shown = "; ".join(f"({', '.join(key)})" for key in table.unique_keys[:3])
                return Failure(ErrorCode.MISSING_KEY,
                               f"insert gives no unique key of {where} ({shorten(shown, 200)}): a replay would add "
                               "the row again; give the key's columns in data (or set allow_no_unique_key for this "
                               f"destination){_unknown_hint(table, keys)}")
        if not table.can_insert:
            return Failure(ErrorCode.FORBIDDEN_DESTINATION, f"KaPoW may not insert into {where}")
    else:
        key = key_columns(table, dest)
        if isinstance(key, Failure):
            return key
        privileges = (("insert", table.can_insert), ("update", table.can_update)) if mode == "upsert" else (
            ("delete", table.can_delete),)
        for what, allowed in privileges:
            if not allowed:
                return Failure(ErrorCode.FORBIDDEN_DESTINATION, f"KaPoW may not {what} rows of {where}")
        missing_key = [k for k in key if k not in keys]
        if missing_key:
            return Failure(ErrorCode.MISSING_KEY,
                           f"{mode} needs the key column{'s' if len(missing_key) > 1 else ''}"
                           f" {', '.join(missing_key)} of {where} in data{_unknown_hint(table, keys)}")
        if dest.version is not None:
            if dest.version not in table.columns:
                return Failure(ErrorCode.UNKNOWN_COLUMN, f"version column {shorten(dest.version)!r} is not a column"
                                                         f" of {where}")
            if dest.version not in keys:
                return Failure(ErrorCode.MISSING_KEY, f"{mode} with a version guard needs {dest.version} in data")
        if mode == "delete":
            return None  # only the key (and version) of a delete are read; other columns are ignored
    columns = table.columns
    unknown = [k for k in keys if k not in columns]
    if unknown:
        shown = ", ".join(repr(shorten(k, 64)) for k in unknown[:5])
        return Failure(ErrorCode.UNKNOWN_COLUMN, f"unknown column{'s' if len(unknown) > 1 else ''} {shown} in {where}"
                                                 f"{_did_you_mean(table, unknown)}")
    generated = [k for k in keys if columns[k].generated]
    if generated:
        return Failure(ErrorCode.UNKNOWN_COLUMN,
                       f"unknown column {generated[0]!r}: it is generated by {where} and cannot be set")
    missing = table.required.difference(keys)
    if missing:
        names = ", ".join(sorted(missing))
        return Failure(ErrorCode.MISSING_COLUMN,
                       f"missing required column{'s' if len(missing) > 1 else ''} {names} (NOT NULL, no default)")
    return None


def _did_you_mean(table: Table, unknown: list[str]) -> str:
    """Column names are case-sensitive: a name that differs from a column only in case says which one."""
    folded = {name.casefold(): name for name in table.columns}
    for name in unknown[:5]:
        found = folded.get(name.casefold())
        if found is not None:
            return f" (names are case-sensitive: did you mean {shorten(found, 64)!r}?)"
    return ""


def _unknown_hint(table: Table, keys: tuple[str, ...]) -> str:
    """What a missing key's message adds when data has unknown columns too (a key spelt in the wrong case, say):
    the client's mistake is often that one."""
    unknown = [k for k in keys if k not in table.columns]
    if not unknown:
        return ""
    shown = ", ".join(repr(shorten(k, 64)) for k in unknown[:3])
    return f"; data has unknown column{'s' if len(unknown) > 1 else ''} {shown}{_did_you_mean(table, unknown)}"
