"""The audit's answer: one count per fate, per partition and in all, and the first records that are missing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CATEGORIES = ("filtered", "landed", "user_errors", "parked", "purged", "pending", "missing")


@dataclass(slots=True)
class PartitionReport:
    """One partition of one topic: the offsets audited, the group's committed offset and the counts."""

    topic: str
    partition: int
    start: int
    end: int
    committed: int  # -1: the group has committed nothing here
    total: int = 0
    filtered: int = 0
    landed: int = 0
    user_errors: int = 0
    parked: int = 0
    purged: int = 0
    pending: int = 0
    missing: int = 0
    unverified: int = 0  # landed, but the table gives no key to find the row by (counted in landed)

    def to_json(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "start": self.start, "end": self.end,
                "committed": self.committed, "total": self.total, **{c: getattr(self, c) for c in CATEGORIES},
                "unverified": self.unverified}


@dataclass(frozen=True, slots=True)
class Missing:
    """A record that is missing, and why (per destination)."""

    topic: str
    partition: int
    offset: int
    why: str

    def to_json(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset, "why": self.why}


@dataclass(slots=True)
class AuditReport:
    """Every record of the audited topics in exactly one category (see docs/OPERATIONS.md, "Did everything land?")."""

    group: str
    scratch: str  # vanity/database whose temporary tables did the joins
    partitions: list[PartitionReport] = field(default_factory=list)
    missing_examples: list[Missing] = field(default_factory=list)
    elapsed_s: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # seconds: reading errors, sources, joins, rows

    def _sum(self, name: str) -> int:
        return sum(getattr(p, name) for p in self.partitions)

    @property
    def total(self) -> int:
        return self._sum("total")

    @property
    def counts(self) -> dict[str, int]:
        return {c: self._sum(c) for c in CATEGORIES}

    @property
    def missing(self) -> int:
        return self._sum("missing")

    @property
    def unverified(self) -> int:
        return self._sum("unverified")

    @property
    def ok(self) -> bool:
        """True when nothing is missing (``kapow audit`` exits 0)."""
        return self.missing == 0

    def to_json(self) -> dict[str, Any]:
        return {"total": self.total, **self.counts, "unverified": self.unverified, "group": self.group,
                "elapsed_s": round(self.elapsed_s, 2), "phases": self.phases,
                "missing_examples": [m.to_json() for m in self.missing_examples],
                "partitions": [p.to_json() for p in self.partitions]}

    def table(self) -> str:
        """The per-partition table ``kapow audit`` prints, with a total line."""
        heads = ("topic", "part", "offsets", "committed", "total", *CATEGORIES)
        rows = [(p.topic, str(p.partition), f"{p.start}-{p.end}", "-" if p.committed < 0 else str(p.committed),
                 str(p.total), *(str(getattr(p, c)) for c in CATEGORIES)) for p in self.partitions]
        rows.append(("all", "", "", "", str(self.total), *(str(v) for v in self.counts.values())))
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
        lines = ["  ".join(h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(heads, widths,
                                                                                              strict=True)))]
        for r in rows:
            lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths,
                                                                                                   strict=True))))
        return "\n".join(lines)
