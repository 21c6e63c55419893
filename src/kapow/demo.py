"""``kapow demo``: land a sample stream in a demo table and show it happening.

Everything comes from a config (``-c FILE``; by default the repository's ``examples/kapow.toml``, found next to
the package, wherever the command is run from): the broker, the topic (the first of ``kafka.topics``), the
database (the first destination's first database), the vanity, the console's address. On other ports, the
variables ``scripts/services.sh`` and the tests read override the config: ``KAPOW_BOOTSTRAP`` (or
``KAPOW_KAFKA_PORT``, meaning ``127.0.0.1:PORT``), ``KAPOW_PG_HOST`` and ``KAPOW_PG_PORT``; the writer then runs
with a copy of the config that says so.

It creates the database with a ``payments`` table keyed by ``payment_id``, starts the writer, publishes a
stream of packets (one in a thousand with an amount no numeric column takes, so ``bad_value`` on the user-errors
topic; one in a thousand foreign records without the header, filtered), and prints a live count of landed rows
until every good packet is there; then a few rows. Ctrl+C or SIGTERM stops the writer cleanly (one SIGTERM:
finish in flight, commit, leave the group) and waits for it: no writer is left behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import msgspec
import psycopg
from psycopg.conninfo import make_conninfo

from kapow.client import Publisher
from kapow.config import Config, DestinationConfig, load_config
from kapow.contract import make_packet
from kapow.errors import KapowError
from kapow.kafka.clients import ensure_topics
from kapow.kafka.connectivity import BrokerUnreachable, wait_for_broker

TABLE_DDL = """
CREATE TABLE IF NOT EXISTS public.payments (
    payment_id bigint PRIMARY KEY,
    account    text NOT NULL,
    amount     numeric(12,2) NOT NULL,
    currency   text NOT NULL DEFAULT 'USD',
    paid_at    timestamptz NOT NULL,
    meta       jsonb,
    landed_at  timestamptz NOT NULL DEFAULT now()
)
"""
BAD_EVERY, BAD_AT, FOREIGN_AT = 1000, 500, 700
BROKER_WAIT_S = 10.0
BAD_CODE = "bad_value"  # docs/errors.md: PostgreSQL refused a value for its column (amount "twelve")


def default_config() -> Path:
    """``examples/kapow.toml`` of the checkout this package runs from (not of the current directory)."""
    path = Path(__file__).resolve().parents[2] / "examples" / "kapow.toml"
    if not path.is_file():
        raise KapowError(f"no default demo config at {path}: pass one with -c FILE")
    return path


class _Stop(Exception):
    """SIGTERM while the demo runs: stop the writer, as for Ctrl+C."""


def _on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise _Stop


class Demo:
    """One demo run over one config: its database, topic, writer process and counts."""

    def __init__(self, config_path: Path) -> None:
        config = apply_overrides(load_config(config_path), os.environ)
        self.config: Config = config
        self.source = config_path
        self.dest: DestinationConfig = config.destinations[0]
        self.database = self.dest.databases[0]
        self.topic = config.kafka.topics[0]
        self.bootstrap = config.kafka.bootstrap_servers
        self.packet_dest = {"type": "postgres", "vanity": self.dest.vanity, "database": self.database,
                            "schema": "public", "table": "payments"}

    def conninfo(self, database: str) -> str:
        pw = self.dest.password()
        return make_conninfo(self.dest.conninfo(database), **({"password": pw} if pw else {}))

    def console_url(self) -> str:
        if not self.config.http.enabled:
            return ""
        host, _, port = self.config.http.listen.rpartition(":")
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host.strip("[]")  # noqa: S104 - printing, not binding
        return f"http://{host}:{port}/"

    def prepare_database(self) -> None:
        where = f"PostgreSQL at {self.dest.host}:{self.dest.port}"
        try:
            with psycopg.connect(self.conninfo("postgres"), autocommit=True) as conn:
                if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone() is None:
                    conn.execute(f'CREATE DATABASE "{self.database}"')  # the operator's config, not a packet
            with psycopg.connect(self.conninfo(self.database), autocommit=True) as conn:
                conn.execute(TABLE_DDL)
                conn.execute("TRUNCATE public.payments")
        except psycopg.OperationalError as exc:
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "no answer"
            raise KapowError(f"{where} is not reachable ({reason}); run: make services") from None

    def count(self) -> int:
        with psycopg.connect(self.conninfo(self.database)) as conn:
            row = conn.execute("SELECT count(*) FROM public.payments").fetchone()
            return int(row[0]) if row else 0

    def writer_config(self) -> Path:
        """The file the writer runs with: the given one, or a copy with the environment's overrides."""
        if not any(os.environ.get(v) for v in ("KAPOW_BOOTSTRAP", "KAPOW_KAFKA_PORT", "KAPOW_PG_HOST",
                                               "KAPOW_PG_PORT")):
            return self.source
        fd, name = tempfile.mkstemp(prefix="kapow-demo-", suffix=".toml")
        with os.fdopen(fd, "w") as out:
            out.write(to_toml(self.config))
        return Path(name)

    def publish(self, pub: Publisher, packets: int, rate: int) -> int:
        """Publish the stream at about ``rate`` per second; return how many packets are deliberately bad."""
        bad = 0
        started = time.monotonic()
        for i in range(1, packets + 1):
            row = {"payment_id": i, "account": f"acct-{i % 97:03d}", "amount": f"{(i * 7919) % 100000 / 100:.2f}",
                   "paid_at": "2026-11-24T10:00:00Z", "meta": {"src": "demo", "n": i}}
            if i % BAD_EVERY == BAD_AT:  # every column given, one value bad: bad_value, and nothing stops
                pub.send_raw(make_packet([self.packet_dest], {**row, "amount": "twelve"}))
                bad += 1
            elif i % BAD_EVERY == FOREIGN_AT:  # foreign traffic on the same topic: filtered, never an error
                pub.send_raw(b'{"not": "for kapow"}', pipeline=False)
            else:
                pub.send([self.packet_dest], row)
            if i % 200 == 0:
                ahead = i / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
                if i % 2000 == 0:
                    print(f"\r  published {i:>7}   landed {self.count():>7}", end="", flush=True)
        return bad


def apply_overrides(config: Config, env: Mapping[str, str]) -> Config:
    """The config with the broker and database addresses the environment names (see the module docstring)."""
    bootstrap = env.get("KAPOW_BOOTSTRAP") or (f"127.0.0.1:{env['KAPOW_KAFKA_PORT']}"
                                               if env.get("KAPOW_KAFKA_PORT") else None)
    if bootstrap:
        config = msgspec.structs.replace(config, kafka=msgspec.structs.replace(config.kafka,
                                                                               bootstrap_servers=bootstrap))
    host, port = env.get("KAPOW_PG_HOST"), env.get("KAPOW_PG_PORT")
    if host or port:
        if port and not port.isdigit():
            raise KapowError(f"KAPOW_PG_PORT: expected a port number, got {port!r}")
        config = msgspec.structs.replace(config, destinations=[
            msgspec.structs.replace(d, host=host or d.host, port=int(port) if port else d.port)
            for d in config.destinations])
    return config


def to_toml(config: Config) -> str:
    """A TOML text that :func:`kapow.config.parse_config` reads back as ``config`` (None values are left out)."""
    out: list[str] = []

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return msgspec.json.encode(v).decode()  # a JSON string is a valid TOML basic string
        return "[" + ", ".join(value(x) for x in v) + "]"

    def key(k: str) -> str:  # "security.protocol" must be quoted, or TOML reads a nested table
        return k if k.replace("_", "").replace("-", "").isalnum() else value(k)

    def table(header: str, body: dict[str, Any]) -> None:
        out.append(header)
        nested = {k: v for k, v in body.items() if isinstance(v, dict)}
        out.extend(f"{key(k)} = {value(v)}" for k, v in body.items() if v is not None and k not in nested)
        out.append("")
        for k, v in nested.items():  # [kafka.settings]
            table(f"[{header.strip('[]')}.{key(k)}]", v)

    raw = msgspec.to_builtins(config)
    for name, body in raw.items():
        if isinstance(body, list):
            for item in body:
                table(f"[[{name}]]", item)
        else:
            table(f"[{name}]", body)
    return "\n".join(out)


def expected_rows(packets: int) -> int:
    bad = packets // BAD_EVERY + (1 if packets % BAD_EVERY >= BAD_AT else 0)
    foreign = packets // BAD_EVERY + (1 if packets % BAD_EVERY >= FOREIGN_AT else 0)
    return packets - bad - foreign


def run_demo(*, packets: int, rate: int, config_path: Path | None = None, wait_s: float = 60.0,
             linger: bool = True) -> int:
    demo = Demo(config_path or default_config())
    try:  # the broker first: with it down, nothing is created anywhere
        wait_for_broker(demo.bootstrap, demo.config.kafka.settings, give_up_s=BROKER_WAIT_S)
    except BrokerUnreachable as exc:
        raise KapowError(f"demo: {exc}; run: make services") from None
    demo.prepare_database()
    ensure_topics(demo.bootstrap, {demo.topic: 6}, settings=demo.config.kafka.settings)
    config = demo.writer_config()
    log_path = Path(tempfile.gettempdir()) / "kapow-demo.log"
    print(f"KaPoW demo: {packets} packets to topic {demo.topic} at {demo.bootstrap} -> {demo.database}.public.payments"
          f" (config {demo.source}; writer log {log_path})")
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    # Its own session: Ctrl+C reaches only the demo, which then stops the writer with one SIGTERM (a second
    # signal would make the writer exit at once instead of finishing cleanly).
    with log_path.open("wb") as log:
        writer = subprocess.Popen([sys.executable, "-m", "kapow", "run", "-c", str(config)],
                                  start_new_session=True, stdout=log, stderr=log)
    expected, landed = expected_rows(packets), 0
    try:
        with Publisher(demo.bootstrap, demo.topic) as pub:
            bad = demo.publish(pub, packets, rate)
        deadline = time.monotonic() + wait_s
        landed = demo.count()
        while landed < expected and time.monotonic() < deadline and writer.poll() is None:
            print(f"\r  published {packets:>7}   landed {landed:>7}", end="", flush=True)
            time.sleep(0.3)
            landed = demo.count()
        print(f"\r  published {packets:>7}   landed {landed:>7}   (expected {expected}; {bad} bad packets went"
              f" to {demo.config.kafka.user_errors_topic} as {BAD_CODE})")
        _show_rows(demo)
        url = demo.console_url()
        print(f"\nThe writer keeps running (log: {log_path}). "
              + (f"Console, metrics and DLQ API: {url}  ([http] of {demo.source})." if url else
                 f"HTTP is off in {demo.source} ([http] enabled = false)."))
        if linger:
            print("Press Ctrl+C to stop it cleanly.")
            while writer.poll() is None:
                time.sleep(0.5)
    except (KeyboardInterrupt, _Stop):
        print("\nstopping the writer (SIGTERM: finish in flight, commit, leave the group) ...")
    finally:
        _stop_writer(writer)
        signal.signal(signal.SIGTERM, previous)
        if config != demo.source:
            config.unlink(missing_ok=True)
        print(f"writer exited with {writer.returncode}")
    return 0 if landed >= expected else 1


def _show_rows(demo: Demo) -> None:
    with psycopg.connect(demo.conninfo(demo.database)) as conn:
        print(f"\n  a few rows of {demo.database}.public.payments:\n")
        print(f"    {'payment_id':>10}  {'account':<9} {'amount':>8}  {'currency':<8} {'paid_at':<25} meta")
        for pid, account, amount, currency, paid_at, meta in conn.execute(
                "SELECT payment_id, account, amount, currency, paid_at, meta::text FROM payments"
                " ORDER BY payment_id LIMIT 5"):
            print(f"    {pid:>10}  {account:<9} {amount:>8}  {currency:<8} {paid_at.isoformat():<25} {meta}")


def _stop_writer(writer: subprocess.Popen[bytes]) -> None:
    """One SIGTERM, a bounded wait, then SIGKILL: the writer never outlives the demo."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM to the demo must not cut this short
    if writer.poll() is None:
        writer.send_signal(signal.SIGTERM)
        try:
            writer.wait(30)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):  # too slow, or a second Ctrl+C: at once
            writer.kill()
            writer.wait(10)
