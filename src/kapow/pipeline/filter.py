"""Step 1, filter: keep only records that carry the pipeline's ``context`` header.

Topics are shared with other traffic; a record without the header is none of KaPoW's business. It is counted
as ``filtered`` and skipped, but its offset still counts: the batch it came in moves the committed offset past
it, so a long stretch of foreign traffic never holds the consumer group's position back. A header that is not
the expected JSON (garbage, or nested a thousand levels deep) makes a record foreign too: never a crash.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kapow.contract import PacketDecoder

if TYPE_CHECKING:
    from confluent_kafka import Message


def is_pipeline_record(decoder: PacketDecoder, msg: Message) -> bool:
    """True when ``msg`` is a KaPoW packet (PRODUCT.md §1); the decoder caches header verdicts."""
    try:
        headers = msg.headers()  # the client's list, or None, read not copied (this runs for every record)
    except Exception:  # headers the client library cannot decode: foreign traffic, never an exception
        return False
    return decoder.is_pipeline_packet(headers)  # type: ignore[arg-type]
