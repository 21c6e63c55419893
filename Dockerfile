# KaPoW, the Kafka -> PostgreSQL Writer: the wheel in a virtual environment, run as a non-root user.
#
#   docker build -t kapow .                                   (or: podman build --format docker -t kapow .)
#   docker run -v ./kapow.toml:/etc/kapow/kapow.toml:ro -e KAPOW_ADMIN_TOKEN=... -p 8080:8080 kapow
#
# The config must listen on all interfaces inside the container ([http] listen = "0.0.0.0:8080"), which needs a
# token (KAPOW_ADMIN_TOKEN, KAPOW_READ_TOKEN or their _FILE forms): docs/SECURITY.md. BASE is any Debian-based
# image with python3 (3.11 or later) and its venv module; the default is the official slim image. A machine that
# reaches no registry builds one with debootstrap (tests/integration/test_package.py shows how).
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# the wheel, built from the source, then installed with its dependencies into a venv that the next stage copies
RUN python3 -m venv /opt/build \
 && /opt/build/bin/pip wheel --no-cache-dir --quiet --no-deps --wheel-dir /wheels . \
 && python3 -m venv /opt/kapow \
 && /opt/kapow/bin/pip install --no-cache-dir --quiet /wheels/kapow-*.whl \
 && /opt/kapow/bin/kapow --version

FROM ${BASE}
LABEL org.opencontainers.image.title="kapow" \
      org.opencontainers.image.description="KaPoW, the Kafka -> PostgreSQL Writer" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/kapow --create-home --shell /usr/sbin/nologin kapow \
 && mkdir -p /etc/kapow
COPY --from=build /opt/kapow /opt/kapow
ENV PATH=/opt/kapow/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /var/lib/kapow
EXPOSE 8080
# /healthz needs no token; the writer answers 503 when its loop or its commits are stuck
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python3", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status != 200)"]
ENTRYPOINT ["kapow"]
CMD ["run", "-c", "/etc/kapow/kapow.toml"]
