"""A throw-away three-node Apache Kafka cluster (KRaft, each node broker + controller), for broker-loss tests.

Built from the jars `make services` resolved into ``.services/kafka/libs``; lives in a temp dir, listens on six
ports the system says are free (``KAPOW_CHAOS_KAFKA_BASE_PORT=N`` asks for N..N+5 instead, and then a taken port is
an error naming the port and the process that holds it), heap 512 MB per node. Nodes can be killed (``kill -9``)
and started again; :meth:`KafkaCluster.destroy` kills every node and removes the directory.

Also runnable by hand: ``python -m tests.chaos.kafka_cluster`` starts one and keeps it up until Ctrl+C.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka.admin import AdminClient

ROOT = Path(__file__).resolve().parents[2]
LIBS = Path(os.environ.get("KAPOW_SERVICES_DIR", ROOT / ".services")) / "kafka" / "libs"  # as scripts/services.sh
LOG4J = ROOT / "services" / "kafka" / "log4j2.properties"
BASE_PORT = int(os.environ["KAPOW_CHAOS_KAFKA_BASE_PORT"]) if os.environ.get("KAPOW_CHAOS_KAFKA_BASE_PORT") else None

PROPERTIES = """\
process.roles=broker,controller
node.id={node}
controller.quorum.voters={voters}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={data}
num.partitions=6
default.replication.factor=3
min.insync.replicas=2
auto.create.topics.enable=false
offsets.topic.replication.factor=3
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=2
log.flush.interval.messages=1
unclean.leader.election.enable=false
broker.session.timeout.ms=4000
broker.heartbeat.interval.ms=1000
"""


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 right now (all held open until all are picked)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def port_holder(port: int) -> str:
    """Who listens on ``port``: "pid N (command line)" from /proc, or a plain phrase when it cannot be told."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # LISTEN
                inodes.add(fields[9])
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fds = list((proc / "fd").iterdir())
        except OSError:
            continue
        links = set()
        for fd in fds:
            try:
                links.add(os.readlink(fd))
            except OSError:  # closed meanwhile (the directory listing's own fd, for one)
                continue
        if any(f"socket:[{inode}]" in links for inode in inodes):
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                cmd = "?"
            return f"pid {proc.name} ({cmd[:120]})"
    return "a process this user cannot see" if inodes else "something that answers but does not show in /proc"


class KafkaCluster:
    """Three KRaft nodes; node ids 1..3, each with a broker port and a controller port.

    With ``base_port`` (or ``KAPOW_CHAOS_KAFKA_BASE_PORT``), node n uses ``base + 2*(n-1)`` and the port above;
    otherwise free ports the system picks, so that no other service on the machine can collide with it.
    """

    def __init__(self, nodes: int = 3, base_port: int | None = BASE_PORT) -> None:
        if not any(LIBS.glob("kafka_*.jar")):
            raise RuntimeError(f"no Kafka jars in {LIBS}; run: make services")
        self.ids = list(range(1, nodes + 1))
        picked = (free_ports(2 * nodes) if base_port is None
                  else [base_port + i for i in range(2 * nodes)])
        self._ports = {n: (picked[2 * (n - 1)], picked[2 * (n - 1) + 1]) for n in self.ids}
        for n in self.ids:
            for port in self._ports[n]:
                if _port_open(port):
                    how = "KAPOW_CHAOS_KAFKA_BASE_PORT" if base_port is not None else "the system's free-port pick"
                    raise RuntimeError(f"port {port} on 127.0.0.1 (from {how}) is taken by {port_holder(port)}")
        self.dir = Path(tempfile.mkdtemp(prefix="kapow-kafka3-"))
        self.cluster_id = ""
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        voters = ",".join(f"{n}@127.0.0.1:{self.controller_port(n)}" for n in self.ids)
        for n in self.ids:
            (self.dir / f"node{n}").mkdir()
            (self.dir / f"node{n}" / "server.properties").write_text(PROPERTIES.format(
                node=n, voters=voters, port=self.port(n), cport=self.controller_port(n),
                data=self.dir / f"node{n}" / "data"))

    def port(self, node: int) -> int:
        return self._ports[node][0]

    def controller_port(self, node: int) -> int:
        return self._ports[node][1]

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{self.port(n)}" for n in self.ids)

    def _java(self, node: int, main: str, *args: str) -> list[str]:
        return ["java", "-Xms128m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={LOG4J}",
                f"-Dkafka.logs.dir={self.dir / f'node{node}'}", "-cp", f"{LIBS}/*", main, *args]

    def format(self) -> None:
        # KRaft cluster ids are 16 random bytes, base64url without padding (22 characters)
        self.cluster_id = "-"
        while self.cluster_id.startswith("-"):  # StorageTool takes "-t -abc…" for an option (as Kafka's own ids do not)
            self.cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        for n in self.ids:
            props = self.dir / f"node{n}" / "server.properties"
            subprocess.run(self._java(n, "kafka.tools.StorageTool", "format", "-t", self.cluster_id, "-c", str(props)),
                           check=True, capture_output=True, timeout=120)

    def start_node(self, node: int) -> None:
        out = (self.dir / f"node{node}" / "stdout.log").open("ab")
        props = str(self.dir / f"node{node}" / "server.properties")
        self.procs[node] = subprocess.Popen(self._java(node, "kafka.Kafka", props), stdout=out, stderr=out,
                                            start_new_session=True)
        out.close()

    def start(self, timeout: float = 180.0) -> KafkaCluster:
        self.format()
        for n in self.ids:
            self.start_node(n)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 180.0, nodes: list[int] | None = None) -> None:
        """Every (given) node is up and registered with the cluster as a broker."""
        want = set(nodes or [n for n in self.ids if self.alive(n)])
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            dead = [n for n in want if not self.alive(n)]
            if dead:
                raise RuntimeError(f"kafka node(s) {dead} exited; see {self.dir}")
            try:
                meta = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0}).list_topics(timeout=5)
                if want <= set(meta.brokers):
                    return
                last = f"brokers {sorted(meta.brokers)}"
            except Exception as exc:
                last = str(exc)
            time.sleep(0.5)
        raise RuntimeError(f"kafka cluster not ready within {timeout:.0f} s ({last}); see {self.dir}")

    def alive(self, node: int) -> bool:
        p = self.procs.get(node)
        return p is not None and p.poll() is None

    def kill(self, node: int) -> None:
        p = self.procs.get(node)
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait(30)

    def leader_of(self, topic: str, partition: int = 0) -> int:
        meta = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0}).list_topics(topic, timeout=10)
        return int(meta.topics[topic].partitions[partition].leader)

    def destroy(self) -> None:
        for n in self.ids:
            self.kill(n)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> KafkaCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.destroy()


if __name__ == "__main__":  # pragma: no cover - manual use
    with KafkaCluster() as cluster:
        print(f"cluster {cluster.cluster_id} up at {cluster.bootstrap} ({cluster.dir}); Ctrl+C to stop", flush=True)
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
