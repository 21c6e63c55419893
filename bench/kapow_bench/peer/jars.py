"""The peer's classpath (Connect 4.3.1 + the Debezium JDBC sink), resolved by Maven once and cached.

``pom.xml`` beside this file is a packaging-``pom`` project that builds nothing: ``mvn dependency:copy-dependencies``
turns it into one flat directory of jars that runs ``ConnectStandalone``. Maven runs only when the cache has no
connector jar yet, so repeated runs neither pay for nor depend on a registry round trip.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from kapow_bench.peer import DEBEZIUM_JDBC_VERSION

POM = Path(__file__).resolve().with_name("pom.xml")


def resolve_jars(libs: Path, *, timeout_s: float = 600.0) -> list[Path]:
    """The jars in ``libs``, resolving them first when the connector jar is not there."""
    marker = libs / f"debezium-connector-jdbc-{DEBEZIUM_JDBC_VERSION}.jar"
    if not marker.exists():
        if shutil.which("mvn") is None:
            raise RuntimeError("the peer needs Maven (mvn) once, to resolve its jars: apt-get install maven")
        tmp = libs.with_name(libs.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        cmd = ["mvn", "-B", "-q", "-Dstyle.color=never", "-f", str(POM), "dependency:copy-dependencies",
               f"-DoutputDirectory={tmp}", "-DincludeScope=runtime"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        if proc.returncode != 0:
            raise RuntimeError("mvn could not resolve the peer classpath:\n"
                               f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        shutil.rmtree(libs, ignore_errors=True)
        tmp.rename(libs)
    jars = sorted(libs.glob("*.jar"))
    if not marker.exists() or not jars:
        raise RuntimeError(f"{libs} does not hold the Debezium JDBC sink jar after resolution")
    return jars
