"""Credentials and transport security of the config: secrets read from variables or files, and the checks of the
TLS and SASL keys of ``[kafka]`` and ``[[destinations]]`` (one line naming the key, at start).

A secret is never kept in the config file: it is read from an environment variable or from a file (a Kubernetes
secret), and it travels as a :class:`Secret`, whose ``repr`` is masked, so that no settings dict that reaches a log
line or a traceback shows it. A secret read from a file (:class:`FileSecret`) knows its file and reads it again on
:meth:`~FileSecret.current`: the database pools ask on every new connection, so a rotated password needs no
restart. Files the config names are checked when it is loaded (present, readable; a private key not readable by
others, as libpq demands), so that a mistake is one line now rather than a failed connection later.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from kapow.errors import ConfigError

if TYPE_CHECKING:
    from kapow.config import Config, DestinationConfig, KafkaConfig

SECRET_MAX_BYTES = 64 * 1024  # a password file larger than this is not a password file


class SecretUnreadable(ConfigError):
    """A secret (a password file, a variable) named by the config cannot be read now; the message names the key."""


class Secret(str):
    """A password on its way to a client library: its ``repr`` is masked, so a dict of settings that ends up in a
    log line or a traceback (``repr`` of a dict shows its values' ``repr``) never shows it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'***'"

    def current(self) -> Secret:
        """The secret as it is now (a fixed one never changes)."""
        return self


class FileSecret(Secret):
    """A secret read from a file, which knows its file: :meth:`current` reads it again. A connection pool given
    one asks it on every new connection (:mod:`kapow.postgres.pool`), so a rotated file needs no restart."""

    path: str
    key: str  # the config key that names the file, for the one-line error when it cannot be read

    def __new__(cls, value: str, path: str, key: str) -> FileSecret:
        secret = super().__new__(cls, value)
        secret.path, secret.key = path, key
        return secret

    def current(self) -> Secret:
        return read_secret_file(self.path, self.key)


def read_text_file(path: str, key: str, max_bytes: int) -> str:
    """The UTF-8 text of a small file the config or the environment names under ``key`` (a secret, a token file);
    :class:`SecretUnreadable`, one line naming ``key``, when it is missing, unreadable, too large or not text."""
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise SecretUnreadable(f"{key}: cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise SecretUnreadable(f"{key}: {path} is larger than {max_bytes // 1024} KiB: not a secret file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretUnreadable(f"{key}: {path} is not UTF-8 text") from None


def read_secret_file(path: str, key: str) -> Secret:
    """The secret in ``path`` without its trailing line break, read now (a rotated file is picked up on the next
    call). Kubernetes writes secret files without one, ``echo`` with one: both give the same password."""
    text = read_text_file(path, key, SECRET_MAX_BYTES).removesuffix("\n").removesuffix("\r")
    if not text:
        raise SecretUnreadable(f"{key}: {path} is empty")
    return FileSecret(text, path, key)


def secret_from(env: str | None, path: str | None, section: str, *, missing_ok: bool = False) -> Secret | None:
    """The secret a ``*_env`` / ``*_file`` pair of ``section`` names, read now; None when neither is set (or, with
    ``missing_ok``, when the variable is not set)."""
    prefix = "sasl_" if section == "kafka" else ""
    if path is not None:
        return read_secret_file(path, f"{section}.{prefix}password_file")
    if env is None or (missing_ok and env not in os.environ):
        return None
    return read_secret_env(env, f"{section}.{prefix}password_env")


def read_secret_env(name: str, key: str) -> Secret:
    value = os.environ.get(name)
    if value is None:
        raise SecretUnreadable(f"{key}: environment variable {name} is not set")
    return Secret(value)


def _file_problem(path: str) -> str | None:
    """Why ``path`` is not a readable file, or None."""
    p = Path(path)
    if not p.exists():
        return f"{path}: no such file"
    if not p.is_file():
        return f"{path}: not a file"
    if not os.access(p, os.R_OK):
        return f"{path}: not readable by this user"
    return None


def _key_file_problem(path: str) -> str | None:
    """libpq refuses a private key others may read (fe-secure-openssl.c); say so now, naming the key, not at the
    first connection. Owned by us: 0600 or less; owned by root: 0640 or less."""
    st = Path(path).stat()
    mode = st.st_mode & 0o777
    if (st.st_uid == os.geteuid() and mode & 0o077) or (st.st_uid == 0 and mode & 0o137):
        return (f"{path} has mode {mode:04o}: libpq refuses a private key others may read "
                "(chmod 600, or 640 when owned by root)")
    return None


def check_destination_security(dest: DestinationConfig, key: str, fail: Callable[[str, str], NoReturn]) -> None:
    if dest.password_env is not None and dest.password_file is not None:
        fail(f"{key}.password_file", "set password_env or password_file, not both")
    if dest.password_file is not None:
        problem = _file_problem(dest.password_file)
        if problem:
            fail(f"{key}.password_file", problem)
        try:
            dest.password()
        except SecretUnreadable as exc:
            fail(f"{key}.password_file", str(exc).partition(": ")[2])
    for name in ("sslrootcert", "sslcert", "sslkey"):
        path = getattr(dest, name)
        if path is None or (name == "sslrootcert" and path == "system"):  # "system": the OS's trusted roots
            continue
        problem = _file_problem(path) or (_key_file_problem(path) if name == "sslkey" else None)
        if problem:
            fail(f"{key}.{name}", problem)
    if (dest.sslcert is None) != (dest.sslkey is None):
        fail(f"{key}.{'sslkey' if dest.sslkey is None else 'sslcert'}",
             "a client certificate needs both sslcert and sslkey")
    if dest.sslmode == "disable" and (dest.sslrootcert or dest.sslcert):
        fail(f"{key}.sslmode", "is disable: sslrootcert, sslcert and sslkey would be ignored")
    default_root = Path.home() / ".postgresql" / "root.crt"
    if dest.sslmode in ("verify-ca", "verify-full") and dest.sslrootcert is None and not default_root.is_file():
        fail(f"{key}.sslrootcert", f"sslmode {dest.sslmode} needs the CA that signs the server's certificate "
                                   "(a PEM file, or \"system\" for the OS's trusted roots)")


_KAFKA_SASL_KEYS = ("sasl_mechanism", "sasl_username", "sasl_password_env", "sasl_password_file")
_KAFKA_SSL_KEYS = ("ssl_ca_location", "ssl_certificate_location", "ssl_key_location")


def check_kafka_security(config: Config, fail: Callable[[str, str], NoReturn]) -> None:
    """Check the typed security keys, then merge them, translated, into ``kafka.settings``: every client is
    built from those settings (:mod:`kapow.kafka.clients`), so none is left without them."""
    k = config.kafka
    proto = k.security_protocol
    given = [name for name in (*_KAFKA_SASL_KEYS, *_KAFKA_SSL_KEYS) if getattr(k, name) is not None]
    if proto is None:
        if given:
            fail(f"kafka.{given[0]}", "needs kafka.security_protocol (SSL, SASL_SSL or SASL_PLAINTEXT)")
        return
    sasl, tls = proto.startswith("SASL_"), proto.endswith("SSL")
    for name in given:
        if (name in _KAFKA_SASL_KEYS and not sasl) or (name in _KAFKA_SSL_KEYS and not tls):
            fail(f"kafka.{name}", f"has no effect with security_protocol = {proto}")
    if sasl:
        for name in ("sasl_mechanism", "sasl_username"):
            if not getattr(k, name):
                fail(f"kafka.{name}", f"required with security_protocol = {proto}")
        if (k.sasl_password_env is None) == (k.sasl_password_file is None):
            fail("kafka.sasl_password_env", "set one of sasl_password_env or sasl_password_file")
    for name in ("sasl_password_file", *_KAFKA_SSL_KEYS):
        path = getattr(k, name)
        problem = _file_problem(path) if path is not None else None
        if problem:
            fail(f"kafka.{name}", problem)
    if (k.ssl_certificate_location is None) != (k.ssl_key_location is None):
        fail(f"kafka.{'ssl_key_location' if k.ssl_key_location is None else 'ssl_certificate_location'}",
             "a client certificate needs both ssl_certificate_location and ssl_key_location")
    try:
        # readable now: a missing variable or file is one line at start, not at the first client
        secret_from(k.sasl_password_env, k.sasl_password_file, "kafka")
    except SecretUnreadable as exc:
        key, _, reason = str(exc).partition(": ")
        fail(key, reason)
    typed = security_properties(k)
    for prop, value in typed.items():
        for name in (prop, *ALIASES.get(prop, ())):
            # the same value is no conflict: a config written back from a parsed one (kapow demo) holds both
            if name in k.settings and str(k.settings[name]) != value:
                fail("kafka.settings", f"{name!r} is set by a typed key of [kafka] too: keep one")
    k.settings = {**typed, **k.settings}


def typed_key_of(kafka: KafkaConfig, message: str) -> str | None:
    """The typed key whose property librdkafka names in ``message`` (``ssl.ca.location failed: ...``), if one set it:
    the line then names the key the user wrote."""
    for key, prop in TYPED_PROPERTIES.items():
        if getattr(kafka, key) is not None and prop in message:
            return f"kafka.{key}"
    return None


# typed key of [kafka] -> librdkafka property
TYPED_PROPERTIES = {
    "security_protocol": "security.protocol",
    "sasl_mechanism": "sasl.mechanism",
    "sasl_username": "sasl.username",
    "ssl_ca_location": "ssl.ca.location",
    "ssl_certificate_location": "ssl.certificate.location",
    "ssl_key_location": "ssl.key.location",
}
PASSWORD_ENV = "kapow.sasl.password.env"  # noqa: S105 - names of settings keys, not secrets
PASSWORD_FILE = "kapow.sasl.password.file"  # noqa: S105
# other names for the same properties: a raw setting under one of them conflicts with a typed key
ALIASES = {"sasl.mechanism": ("sasl.mechanisms",), PASSWORD_ENV: ("sasl.password", PASSWORD_FILE),
           PASSWORD_FILE: ("sasl.password", PASSWORD_ENV)}


def security_properties(kafka: KafkaConfig) -> dict[str, str]:
    """The librdkafka properties the typed security keys stand for, and where the SASL password is (read by
    :func:`with_secrets`). Hostname verification stays librdkafka's default (``https``: the broker's certificate
    must name the host we dial), the production setting."""
    props = {prop: str(getattr(kafka, key)) for key, prop in TYPED_PROPERTIES.items()
             if getattr(kafka, key) is not None}
    if kafka.sasl_password_file is not None:
        props[PASSWORD_FILE] = kafka.sasl_password_file
    elif kafka.sasl_password_env is not None:
        props[PASSWORD_ENV] = kafka.sasl_password_env
    return props


def with_secrets(conf: dict[str, Any]) -> dict[str, Any]:
    """``conf`` with KaPoW's password keys replaced by ``sasl.password``, read now and masked in any ``repr``;
    :class:`kapow.credentials.SecretUnreadable` (one line naming the key) when it cannot be read."""
    env, path = conf.pop(PASSWORD_ENV, None), conf.pop(PASSWORD_FILE, None)
    if path is not None:
        conf["sasl.password"] = read_secret_file(str(path), "kafka.sasl_password_file")
    elif env is not None:
        conf["sasl.password"] = read_secret_env(str(env), "kafka.sasl_password_env")
    return conf
