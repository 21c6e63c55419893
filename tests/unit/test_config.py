"""Config: valid files parse with defaults; every bad one fails with one line naming the key."""

from __future__ import annotations

import pytest

from kapow.config import parse_config
from kapow.errors import ConfigError, KapowError

GOOD = """
[kafka]
bootstrap_servers = "127.0.0.1:9092"
topics = ["events"]
[[destinations]]
vanity = "warehouse"
databases = ["analytics"]
"""


def test_minimum_config_and_defaults() -> None:
    c = parse_config(GOOD)
    assert c.kafka.group_id == "kapow"
    assert c.kafka.user_errors_topic == "kapow.errors.user"
    assert c.kafka.system_errors_topic == "kapow.errors.system"
    assert c.destinations[0].max_connections == 4 and c.destinations[0].port == 5432
    assert c.http.listen == "127.0.0.1:8080"
    assert c.destination("warehouse") is c.destinations[0] and c.destination("nope") is None


def test_product_md_example_parses() -> None:
    c = parse_config(GOOD.replace('databases = ["analytics"]', 'host = "127.0.0.1"\nport = 5432\nuser = "postgres"\n'
                                  'databases = ["analytics"]\nmax_connections = 4\n[http]\nlisten = "127.0.0.1:8080"')
                     + '[kafka.settings]\n"security.protocol" = "PLAINTEXT"\n')
    assert c.kafka.settings == {"security.protocol": "PLAINTEXT"}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (GOOD.replace('bootstrap_servers = "127.0.0.1:9092"\n', ""),
         "kafka: missing required field bootstrap_servers"),
        (GOOD.replace('databases = ["analytics"]', 'databases = ["analytics"]\nport = "x"'),
         "destinations[0].port: expected int, got str"),
        (GOOD.replace('topics = ["events"]', 'topics = ["events"]\ntopic = "x"'),
         "kafka: contains unknown field topic"),
        (GOOD.replace('databases = ["analytics"]', "databases = []"), "destinations[0].databases"),
        (GOOD.replace('databases = ["analytics"]', 'databases = ["a"]\nmax_connections = 0'), "max_connections"),
        (GOOD.replace('databases = ["analytics"]', 'databases = ["a"]\npassword_env = "KAPOW_NOPE_UNSET"'),
         "KAPOW_NOPE_UNSET is not set"),
        (GOOD.replace('topics = ["events"]', 'topics = ["kapow.errors.user"]'), "must not be the error topic"),
        (GOOD + "[http]\nlisten = 'nope'\n", "http.listen"),
        (GOOD + "[log]\nlevel = 'LOUD'\n", "log.level"),
        ("[kafka]\nbootstrap_servers='x'\ntopics=['t']\n", "destinations"),
        # values that used to escape the one-line rule (a C assertion, tracebacks, or every packet parked)
        (GOOD.replace('topics = ["events"]', 'topics = ["events"]\ngroup_id = ""'),
         "kafka.group_id: must not be empty"),
        (GOOD + "[pipeline]\nbatch_max_messages = 100000000\n", "pipeline.batch_max_messages: must be between"),
        (GOOD + "[pipeline]\nhold_s = -1\n", "pipeline.hold_s"),
        (GOOD + "[pipeline]\nmax_json_depth = 5000\n", "pipeline.max_json_depth"),
        (GOOD + '[kafka.settings]\n"no.such.property" = 1\n', 'kafka.settings: No such configuration property'),
        (GOOD + '[kafka.settings]\n"fetch.wait.max.ms" = "abc"\n', "kafka.settings: Invalid value"),
        # settings that would break the commit guarantee
        (GOOD + '[kafka.settings]\n"enable.auto.commit" = true\n', 'kafka.settings."enable.auto.commit": must stay'),
        (GOOD + '[kafka.settings]\n"enable.auto.offset.store" = "true"\n', '"enable.auto.offset.store": must stay'),
        (GOOD + '[kafka.settings]\n"partition.assignment.strategy" = "cooperative-sticky"\n', "cooperative"),
        (GOOD + '[kafka.settings]\n"group.protocol" = "consumer"\n', "classic group protocol"),
        (GOOD.replace('databases = ["analytics"]', 'databases = ["a"]\nstatement_timeout_ms = -1'),
         "destinations[0].statement_timeout_ms: must be between"),
        (GOOD.replace('databases = ["analytics"]', 'databases = ["a"]\nmodes = ["merge"]'), "destinations[0].modes"),
        (GOOD.replace('topics = ["events"]', 'topics = ["events"]\nuser_errors_topic = "bad topic!"'),
         "kafka.user_errors_topic: 'bad topic!' is not a legal Kafka topic name"),
        (GOOD.replace('topics = ["events"]', 'topics = ["a/b"]'), "kafka.topics: 'a/b' is not a legal"),
        (GOOD.replace('topics = ["events"]', 'topics = ["kapow.errors.system.done"]'), "error topic"),
    ],
)
def test_bad_configs(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(text, "kapow.toml")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("kapow.toml: ")
    assert needle in message, message


def test_demo_config_round_trips_through_toml_with_the_port_overrides() -> None:
    """`kapow demo` hands its writer a copy of the config with KAPOW_BOOTSTRAP/KAFKA_PORT/PG_HOST/PG_PORT applied."""
    from kapow.demo import apply_overrides, to_toml

    c = parse_config(GOOD + 'password_env = "HOME"\nschemas = ["public"]\n[kafka.settings]\n"security.protocol" = '
                     '"PLAINTEXT"\n"socket.timeout.ms" = 5000\n[log]\nformat = "text"\n')
    assert parse_config(to_toml(c)) == c
    moved = apply_overrides(c, {"KAPOW_KAFKA_PORT": "19092", "KAPOW_PG_PORT": "15432", "KAPOW_PG_HOST": "db.local"})
    assert moved.kafka.bootstrap_servers == "127.0.0.1:19092"
    assert (moved.destinations[0].host, moved.destinations[0].port) == ("db.local", 15432)
    assert parse_config(to_toml(moved)) == moved
    assert apply_overrides(c, {"KAPOW_BOOTSTRAP": "k:1", "KAPOW_KAFKA_PORT": "2"}).kafka.bootstrap_servers == "k:1"
    assert apply_overrides(c, {}) == c
    with pytest.raises(KapowError, match="KAPOW_PG_PORT: expected a port number, got 'x'"):
        apply_overrides(c, {"KAPOW_PG_PORT": "x"})
