"""`--check` prints the effective configuration as `postconf -n` does: every
key that differs from its default, in a form an env file takes back, with
passwords masked."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

from willi.effective import effective_config
from willi.config import load_config
from tests.support.willi_process import WilliProcess

SET = {
    "WILLI_LISTEN": "127.0.0.1:2525,[::1]:2526",
    "WILLI_HOSTNAME": "willi.test",
    "WILLI_PROXY_PROTOCOL_FROM": "10.0.0.0/8,192.0.2.1/32",
    "WILLI_MAX_MESSAGE_SIZE": "10MiB",
    "WILLI_SPLIT_RECIPIENTS": "off",
    "WILLI_CLIENT_TIMEOUT": "90s",
    "WILLI_UPSTREAM_POOL_IDLE": "0s",
    "WILLI_UPSTREAM_AUTH": "plain",
    "WILLI_UPSTREAM_AUTH_USER": "relay",
    "WILLI_UPSTREAM_AUTH_PASSWORD": "hunter2",
    "WILLI_METRICS_LISTEN": "127.0.0.1:9125",
    "WILLI_MAPPING_1": "static:127.0.0.1:2600",
    "WILLI_MAPPING_1_TLS_VERIFY": "off",
    "WILLI_MAPPING_2": "mysql://willi:s3cret@127.0.0.1:3306/mail",
    "WILLI_MAPPING_2_CACHE_TTL": "120s",
}
DEFAULTS_SPELLED_OUT = {"WILLI_MAX_RECIPIENTS": "100", "WILLI_LOG_LEVEL": "info", "WILLI_XCLIENT": "auto"}


def test_only_keys_that_differ_from_their_default_are_shown_and_passwords_are_masked() -> None:
    config = load_config(None, {**SET, **DEFAULTS_SPELLED_OUT})
    shown = effective_config(config)
    expected = {**SET, "WILLI_UPSTREAM_AUTH_PASSWORD": "***",
                "WILLI_MAPPING_2": "mysql://willi:***@127.0.0.1:3306/mail"}
    assert sorted(shown) == sorted(f"{key}={value}" for key, value in expected.items())
    assert not any("hunter2" in line or "s3cret" in line for line in shown)


def test_the_lines_read_back_give_the_same_configuration() -> None:
    config = load_config(None, SET)
    shown = dict(line.split("=", 1) for line in effective_config(config))
    shown["WILLI_UPSTREAM_AUTH_PASSWORD"] = SET["WILLI_UPSTREAM_AUTH_PASSWORD"]
    shown["WILLI_MAPPING_2"] = SET["WILLI_MAPPING_2"]
    assert load_config(None, shown) == config


def test_a_configuration_of_defaults_shows_only_its_mapping() -> None:
    # The system's own name is the hostname's default: spelled out, it is no change.
    config = load_config(None, {"WILLI_MAPPING_1": "static:127.0.0.1:2600", "WILLI_HOSTNAME": "willi.test"})
    config = dataclasses.replace(config, hostname=socket.getfqdn())
    assert effective_config(config) == ["WILLI_MAPPING_1=static:127.0.0.1:2600"]


def test_check_prints_the_effective_configuration_before_its_verdict(tmp_path: Path) -> None:
    env = {"WILLI_HOSTNAME": "willi.test", "WILLI_MAPPING_1": "static:127.0.0.1:2600",
           "WILLI_MAX_MESSAGE_SIZE": "1MiB", "WILLI_MAX_ERRORS": "10"}
    result = WilliProcess.run_cli("--check", env=env, tmp_path=tmp_path)
    assert result.returncode == 0, result
    assert result.stdout.splitlines() == [
        "WILLI_HOSTNAME=willi.test", "WILLI_MAX_MESSAGE_SIZE=1MiB", "WILLI_MAPPING_1=static:127.0.0.1:2600",
        "willi: configuration ok (1 mappings)"]
