"""Read the most recent records of the user-errors topic, newest first, for the console and ``kapow errors list``.

User errors are a callback topic for clients; operators only look at them. The read is bounded twice: at most
``per_partition`` records from the end of each partition, each record cut to a fixed size (:func:`bound`: the value
to ``keep_bytes``, the key and each header to a kilobyte, the headers in all to ``keep_bytes``; a packet may be up
to ``max_packet_bytes``, a megabyte by default, and its client's headers as large), so neither the time nor the
memory grows with the topic or with what a client sends. Each record is cut as it is read: a read holds one
uncut record at a time, besides the reader's bounded prefetch.
"""

from __future__ import annotations

from kapow.deadletter.reader import open_reader
from kapow.deadletter.records import DlqRecord, Trimmed, bound, decode_record, trim
from kapow.kafka.clients import Settings

__all__ = ["DlqRecord", "Trimmed", "bound", "recent_records", "trim"]


def recent_records(bootstrap: str, topic: str, *, settings: Settings | None = None, per_partition: int = 200,
                   keep_bytes: int = 16 * 1024, timeout: float = 10.0) -> list[Trimmed]:
    """The last ``per_partition`` records of every partition of ``topic``, newest (by failure time) first."""
    with open_reader(bootstrap, settings, idle_timeout=timeout) as reader:
        spans = {p: (max(low, high - per_partition), high) for p, (low, high) in reader.watermarks(topic).items()}
        out = [bound(decode_record(msg), keep_bytes) for msg in reader.read(topic, spans)]
    out.sort(key=lambda t: (t.record.failed_at_ms, t.record.partition, t.record.offset), reverse=True)
    return out
