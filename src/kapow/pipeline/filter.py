"""Step 1, filter: keep only records that carry the pipeline's ``context`` header.

Topics are shared with other traffic; a record without the header is none of KaPoW's business. It is counted
as ``filtered`` and skipped, but its offset still counts: the batch it came in moves the committed offset past
it, so a long stretch of foreign traffic never holds the consumer group's position back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kapow.contract import is_pipeline_packet

if TYPE_CHECKING:
    from confluent_kafka import Message


def is_pipeline_record(msg: Message) -> bool:
    """True when ``msg`` is a KaPoW packet (see PRODUCT.md §1)."""
    return is_pipeline_packet(msg.headers())  # type: ignore[arg-type]  # a list of (str, bytes) from librdkafka
