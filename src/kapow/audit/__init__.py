"""Prove every packet's fate: each record of the input topics is landed, filtered, a user error, parked, purged,
pending or missing, exactly one of them (``kapow audit``, ``GET /api/audit``; docs/OPERATIONS.md).

    from kapow.audit import audit
    report = audit(load_config("kapow.toml"))
    assert report.missing == 0, report.missing_examples
"""

from kapow.audit.report import CATEGORIES, AuditReport, Missing, PartitionReport
from kapow.audit.run import audit, parse_offsets

__all__ = ["CATEGORIES", "AuditReport", "Missing", "PartitionReport", "audit", "parse_offsets"]
