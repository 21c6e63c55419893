"""What one workload is: the write mode, the route (if any), the packet size and how traffic spreads over tables.

A spec is small and hashable: the report groups runs by it (medians are taken over runs of one spec), and the
options turn into a list of specs (``--all`` is simply a longer list). Impossible combinations are refused here,
in one line, before anything is created.
"""

from __future__ import annotations

from dataclasses import dataclass

from kapow.errors import KapowError

MODES = ("insert", "upsert", "delete")
ROUTES = ("json", "debezium")
SIZES = (250, 12)


@dataclass(frozen=True)
class Spec:
    mode: str = "insert"  # what each packet asks: insert | upsert | delete
    route: str | None = None  # None: KaPoW's envelope; "json" or "debezium": a [[routes]] topic
    size: int = 250  # bytes of a Kafka value, about: 250 (events) or 12 (ids)
    tables: int = 1
    databases: int = 1
    skew: float = 0.0  # 0: traffic spread evenly over the tables; s > 0: zipf-like, table r gets 1/(r+1)^s
    version: bool = False  # upserts and deletes guarded by "version": "rev"
    repeats: int = 4  # upsert and debezium: packets per key, on average
    own_names: bool = False  # every table its own column names (one more column, tag_<table>), as a company's are

    def check(self) -> Spec:
        if self.mode not in MODES:
            raise KapowError(f"bench: --mode {self.mode!r}: choose from {', '.join(MODES)}")
        if self.route is not None and self.route not in ROUTES:
            raise KapowError(f"bench: --route {self.route!r}: choose from {', '.join(ROUTES)}")
        if self.size not in SIZES:
            raise KapowError(f"bench: --size {self.size}: choose from 250 or 12 (bytes of a packet)")
        if self.size == 12 and (self.mode != "insert" or self.route):
            raise KapowError("bench: --size 12 is for inserts only (upserts, deletes and routes use the 250 B rows)")
        if self.tables < 1 or self.databases < 1 or self.databases > self.tables:
            raise KapowError("bench: --tables and --databases must be at least 1, with no more databases than tables")
        if self.route and self.tables > 1:
            raise KapowError("bench: a route binds one topic to one table: --route takes --tables 1")
        if self.route == "debezium" and self.mode != "insert":
            raise KapowError("bench: a Debezium event says its own operation: --route debezium takes no --mode")
        if self.own_names and (self.tables == 1 or self.size != 250 or self.route):
            raise KapowError("bench: --own-names gives each of several tables its own names: add --tables N (N > 1)"
                             ", with 250 B packets and no --route")
        if self.skew < 0 or self.repeats < 1:
            raise KapowError("bench: --skew must be >= 0 and --repeats >= 1")
        if self.version and self.route == "debezium":
            raise KapowError("bench: --version is not measured on --route debezium (a delete's image has no rev)")
        if self.version and self.mode == "insert":
            raise KapowError("bench: --version guards upserts and deletes: add --mode upsert or --mode delete")
        return self

    def tag_column(self, table: int) -> str | None:
        """With ``own_names``, the column only table ``table`` has (and its rows give): else None."""
        return f"tag_{table:05d}" if self.own_names else None

    @property
    def has_rev(self) -> bool:
        """Whether rows carry ``rev`` (their final state is then checked by it, and ``--version`` can guard it)."""
        return self.mode != "insert" or self.route == "debezium"

    @property
    def stamps_rows(self) -> bool:
        """Whether every packet inserts a row (``landed_at`` then dates each one) or statements must be stamped."""
        return self.mode == "insert" and self.route != "debezium"

    @property
    def label(self) -> str:
        """A short name for tables and plots, e.g. ``upsert 250B +version`` or ``insert 250B 1000t/4db zipf1``."""
        what = f"route {self.route}" if self.route else self.mode
        if self.route == "json" and self.mode != "insert":
            what += f" {self.mode}"
        parts = [what, f"{self.size}B" if self.mode != "delete" else "keys"]
        if self.tables > 1:
            parts.append(f"{self.tables}t/{self.databases}db" + (f" zipf{self.skew:g}" if self.skew else ""))
        if self.own_names:
            parts.append("own names")
        if self.version:
            parts.append("+version")
        return " ".join(parts)
