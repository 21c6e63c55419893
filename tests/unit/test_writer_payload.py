"""COPY text payload: every byte of the client's JSON survives COPY's escaping."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kapow.postgres.writer import copy_payload


def unescape_copy_text(field: bytes) -> bytes:
    """What PostgreSQL's COPY text format reads back from an escaped field (the subset we emit)."""
    out = bytearray()
    i = 0
    table = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("\\"): b"\\"}
    while i < len(field):
        if field[i] == ord("\\"):
            out += table[field[i + 1]]
            i += 2
        else:
            out.append(field[i])
            i += 1
    return bytes(out)


@given(st.lists(st.binary(max_size=50).filter(lambda b: b"\x00" not in b), max_size=20))
def test_copy_payload_roundtrip(docs: list[bytes]) -> None:
    payload = copy_payload(docs)
    lines = payload.split(b"\n")
    assert lines[-1] == b""
    lines = lines[:-1]
    assert len(lines) == len(docs)
    for i, (line, doc) in enumerate(zip(lines, docs, strict=True)):
        n, _, field = line.partition(b"\t")
        assert int(n) == i
        assert b"\t" not in field and b"\r" not in field
        assert unescape_copy_text(field) == doc
