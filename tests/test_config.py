"""Configuration: how WILLI_ keys become a Config, and how bad ones are refused."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from pathlib import Path

import pytest

from willi.config import (
    KEYS,
    Config,
    defaults,
    load_config,
    mask,
    parse_bool,
    parse_duration,
    parse_listen,
    parse_size,
)
from willi.errors import ConfigError
from willi.routing import MappingSpec

REPO = Path(__file__).resolve().parent.parent
MAPPING = {"WILLI_MAPPING_1": "static:mx.example.org"}


def load(**env: str) -> Config:
    """Load from the environment alone, with one mapping unless given others."""
    if not any(key.startswith("WILLI_MAPPING_") for key in env):
        env = {**MAPPING, **env}
    return load_config(None, env)


def refused(**env: str) -> ConfigError:
    """The ConfigError that loading this environment raises."""
    with pytest.raises(ConfigError) as caught:
        load(**env)
    return caught.value


@pytest.fixture(autouse=True)
def no_willi_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in an empty directory, so a ./willi.env lying around is never read,
    on a host whose name is known (the real one may be anything, or slow)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("socket.getfqdn", lambda: "willi.test")
    return tmp_path


def readable(directory: Path, name: str) -> str:
    path = directory / name
    path.write_text("x\n")
    return str(path)


# --- parsers --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1", 1),
        ("1000", 1000),
        ("512B", 512),
        ("64KiB", 64 * 1024),
        ("64k", 64 * 1024),
        ("64 kb", 64 * 1024),
        ("20MiB", 20 * 1024**2),
        ("20m", 20 * 1024**2),
        ("2GiB", 2 * 1024**3),
        ("2g", 2 * 1024**3),
    ],
)
def test_sizes_are_bytes_or_binary_multiples(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "0", "0MiB", "-1", "1.5M", "20 MegaBytes", "20T", "MiB"])
def test_sizes_that_are_not_whole_positive_amounts_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30", 30.0), ("30s", 30.0), ("0.5", 0.5), ("1.5s", 1.5), ("5m", 300.0), ("1h", 3600.0),
     ("2H", 7200.0), (".25", 0.25)],
)  # fmt: skip
def test_durations_are_seconds_or_take_s_m_h(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["0", "0s", "-5", "5d", "5ms", "abc", "inf", "nan", "1e3"])
def test_durations_must_be_positive_and_in_s_m_h(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["8761h", "9" * 400, "31536001"])
def test_a_duration_of_more_than_a_year_is_refused(text: str) -> None:
    # "9" * 400 seconds is a float of inf; no select() could wait for it.
    with pytest.raises(ValueError, match="at most a year"):
        parse_duration(text)
    assert parse_duration("8760h") == 365 * 24 * 3600.0


@pytest.mark.parametrize("text", ["on", "ON", "true", "True", "yes", "1"])
def test_booleans_accept_the_usual_yes_words(text: str) -> None:
    assert parse_bool(text) is True


@pytest.mark.parametrize("text", ["off", "Off", "false", "FALSE", "no", "0"])
def test_booleans_accept_the_usual_no_words(text: str) -> None:
    assert parse_bool(text) is False


@pytest.mark.parametrize("text", ["", "enabled", "2", "y"])
def test_booleans_refuse_anything_else(text: str) -> None:
    with pytest.raises(ValueError, match="on/off"):
        parse_bool(text)


@pytest.mark.parametrize(
    ("text", "addresses"),
    [
        ("127.0.0.1:2525", (("127.0.0.1", 2525),)),
        ("[::]:25", (("::", 25),)),
        ("[2001:db8::1]:587", (("2001:db8::1", 587),)),
        ("*:25", (("0.0.0.0", 25),)),
        (":25", (("0.0.0.0", 25),)),
        ("localhost:25", (("localhost", 25),)),
        ("0.0.0.0:25, [::]:25", (("0.0.0.0", 25), ("::", 25))),
    ],
)
def test_listen_takes_a_list_of_host_port_forms(text: str, addresses: tuple) -> None:
    assert parse_listen(text) == addresses


@pytest.mark.parametrize(
    "text", ["25", "host", "host:", "host:0", "host:65536", "host:http", "::1:25",
             "[nonsense]:25", "[::1]", "bad host:25", ",", "256.1.1.1:25", "1.2.3:25",
             "127.0.0.1.1:25"],
)  # fmt: skip
def test_listen_refuses_missing_ports_and_unbracketed_ipv6(text: str) -> None:
    with pytest.raises(ValueError, match="host:port"):
        parse_listen(text)


# --- defaults and sources -------------------------------------------------------


def test_a_mapping_alone_gives_the_documented_defaults() -> None:
    config = load(WILLI_HOSTNAME="mx.example.org")
    assert config.listen == (("0.0.0.0", 25),)
    assert config.max_message_size == 20 * 1024 * 1024
    assert config.max_recipients == 100
    assert (config.max_connections, config.max_connections_per_ip) == (1000, 50)
    assert config.max_errors == 10
    assert config.split_recipients is True
    assert config.bare_lf == "reject"
    assert config.client_timeout == 300.0
    assert config.upstream_data_timeout == 600.0
    assert config.lookup_timeout == 15.0
    assert (config.lookup_threads, config.lookup_queue) == (4, 1000)
    assert config.upstream_starttls == "if-client"
    assert (config.xclient, config.upstream_proxy_protocol, config.upstream_auth) == (
        "auto", "off", "off",
    )  # fmt: skip
    assert config.tls_cert is None and config.proxy_protocol is False
    assert (config.log_format, config.log_level, config.workers) == ("logfmt", "info", 1)
    assert config.metrics_listen is None
    assert config == Config(hostname="mx.example.org", mappings=config.mappings)


def test_the_hostname_defaults_to_the_system_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("socket.getfqdn", lambda: "box.example.net")
    assert load().hostname == "box.example.net"


def test_an_unusable_system_name_asks_for_willi_hostname(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("socket.getfqdn", lambda: "bad_name")
    assert refused().key == "WILLI_HOSTNAME"


@pytest.mark.parametrize("name", ["mail server.example", "mx.exämple.org", "-mx.example", "a..b"])
def test_a_hostname_must_be_a_plain_domain_name(name: str) -> None:
    assert refused(WILLI_HOSTNAME=name).key == "WILLI_HOSTNAME"


def test_every_key_is_read_into_its_field(no_willi_env: Path) -> None:
    cert, key = readable(no_willi_env, "c.pem"), readable(no_willi_env, "k.pem")
    config = load(
        WILLI_LISTEN="127.0.0.1:2525", WILLI_HOSTNAME="willi.localhost", WILLI_TLS_CERT=cert,
        WILLI_TLS_KEY=key, WILLI_TLS_HANDSHAKE_TIMEOUT="5", WILLI_PROXY_PROTOCOL="on",
        WILLI_PROXY_PROTOCOL_FROM="10.0.0.0/8, 2001:db8::/32", WILLI_MAX_MESSAGE_SIZE="1MiB",
        WILLI_MAX_RECIPIENTS="7", WILLI_SPLIT_RECIPIENTS="off", WILLI_BARE_LF="PASS",
        WILLI_RECIPIENT_DELIMITER="+-", WILLI_LOOKUP_THREADS="64", WILLI_UPSTREAM_STARTTLS="required",
        WILLI_UPSTREAM_TLS_CA=cert, WILLI_UPSTREAM_AUTH="plain", WILLI_UPSTREAM_AUTH_USER="u",
        WILLI_UPSTREAM_AUTH_PASSWORD="p w", WILLI_WORKERS="4", WILLI_LOG_FORMAT="json",
        WILLI_LOG_LEVEL="debug", WILLI_METRICS_LISTEN="127.0.0.1:9125",
    )  # fmt: skip
    assert config.listen == (("127.0.0.1", 2525),)
    assert (config.tls_cert, config.tls_key, config.tls_handshake_timeout) == (cert, key, 5.0)
    assert config.proxy_protocol_from == (
        ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"),
    )  # fmt: skip
    assert (config.max_message_size, config.max_recipients) == (1024 * 1024, 7)
    assert (config.split_recipients, config.bare_lf, config.recipient_delimiter) == (
        False, "pass", "+-",
    )  # fmt: skip
    assert (config.lookup_threads, config.upstream_starttls, config.upstream_tls_ca) == (
        64, "required", cert,
    )  # fmt: skip
    assert (config.upstream_auth_user, config.upstream_auth_password) == ("u", "p w")
    assert (config.workers, config.log_format, config.log_level) == (4, "json", "debug")
    assert config.metrics_listen == ("127.0.0.1", 9125)


def test_the_config_cannot_be_changed_after_loading() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        load().max_recipients = 5  # type: ignore[misc]


def test_environment_variables_override_the_file(no_willi_env: Path) -> None:
    env_file = no_willi_env / "custom.env"
    env_file.write_text("WILLI_MAPPING_1=static:a\nWILLI_MAX_RECIPIENTS=5\nWILLI_MAX_ERRORS=3\n")
    config = load_config(str(env_file), {"WILLI_MAX_RECIPIENTS": "9", "HOME": "/root"})
    assert (config.max_recipients, config.max_errors) == (9, 3)


def test_an_empty_variable_puts_a_key_back_to_its_default(no_willi_env: Path) -> None:
    env_file = no_willi_env / "custom.env"
    env_file.write_text("WILLI_MAPPING_1=static:a\nWILLI_MAX_RECIPIENTS=5\n")
    assert load_config(str(env_file), {"WILLI_MAX_RECIPIENTS": ""}).max_recipients == 100


def test_willi_env_in_the_working_directory_is_read_by_default(no_willi_env: Path) -> None:
    (no_willi_env / "willi.env").write_text("WILLI_MAPPING_1=static:a\nWILLI_WORKERS=3\n")
    assert load_config(None, {}).workers == 3


def test_without_willi_env_only_the_environment_counts() -> None:
    assert load_config(None, {"WILLI_MAPPING_1": "static:a"}).workers == 1


def test_an_explicit_config_file_that_is_missing_is_an_error(no_willi_env: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(str(no_willi_env / "nope.env"), MAPPING)
    assert caught.value.key == "--config"


def test_file_values_are_taken_literally_without_interpolation(no_willi_env: Path) -> None:
    env_file = no_willi_env / "custom.env"
    env_file.write_text(
        "WILLI_MAPPING_1=static:a\nWILLI_UPSTREAM_AUTH=plain\nWILLI_UPSTREAM_AUTH_USER=u\n"
        "WILLI_UPSTREAM_AUTH_PASSWORD='pa${HOME}ss'\nWILLI_UPSTREAM_STARTTLS=required\n"
    )
    assert load_config(str(env_file), {}).upstream_auth_password == "pa${HOME}ss"


def test_the_example_file_loads_and_documents_every_default() -> None:
    example = (REPO / "willi.env.example").read_text()
    config = load_config(str(REPO / "willi.env.example"), {})
    assert config.listen == (("127.0.0.1", 2525),) and config.hostname == "willi.localhost"
    assert [spec.uri for spec in config.mappings] == ["csv:examples/upstreams.csv"]
    documented = dict(re.findall(r"^#?(WILLI_[A-Z_]+)=(.*)$", example, re.MULTILINE))
    parsers = {key.name: key.parse for key in KEYS}
    for key, default in defaults().items():
        assert key in documented, f"{key} is missing from willi.env.example"
        if documented[key] and key not in ("WILLI_LISTEN",):
            assert parsers[key](documented[key]) == default, key


# --- errors ---------------------------------------------------------------------


def test_a_bad_value_is_one_line_naming_key_value_and_expectation() -> None:
    error = refused(WILLI_MAX_RECIPIENTS="abc")
    assert str(error) == "WILLI_MAX_RECIPIENTS='abc': expected a whole number >= 1"
    assert (error.key, error.value) == ("WILLI_MAX_RECIPIENTS", "abc")


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("WILLI_MAX_MESSAGE_SIZE", "lots", "KiB/MiB/GiB"),
        ("WILLI_CLIENT_TIMEOUT", "0", "duration > 0"),
        ("WILLI_SPLIT_RECIPIENTS", "maybe", "on/off"),
        ("WILLI_LISTEN", "::1:25", "[::]:25"),
        ("WILLI_BARE_LF", "fix", "reject, pass"),
        ("WILLI_LOOKUP_THREADS", "65", "from 1 to 64"),
        ("WILLI_LOG_LEVEL", "verbose", "debug, info, warning, error"),
        ("WILLI_PROXY_PROTOCOL_FROM", "10.0.0.0/33", "CIDR"),
        ("WILLI_TLS_CERT", "/nonexistent/cert.pem", "readable file"),
        ("WILLI_RECIPIENT_DELIMITER", "@", "delimiter"),
        ("WILLI_METRICS_LISTEN", "9125", "host:port"),
    ],
)
def test_each_bad_value_names_its_key_value_and_what_was_expected(
    key: str, value: str, expected: str
) -> None:
    message = str(refused(**{key: value}))
    assert message.startswith(f"{key}={value!r}: expected ")
    assert expected in message and "\n" not in message


def file_refused(directory: Path, text: str) -> ConfigError:
    """The ConfigError that loading this env file (and an empty environment) raises."""
    (directory / "willi.env").write_text("WILLI_MAPPING_1=static:a\n" + text)
    with pytest.raises(ConfigError) as caught:
        load_config(None, {})
    return caught.value


def test_an_unknown_key_is_refused_with_a_suggestion(no_willi_env: Path) -> None:
    error = file_refused(no_willi_env, "WILLI_MAX_RECIPIENT=5\n")
    assert error.key == "WILLI_MAX_RECIPIENT"
    assert "did you mean WILLI_MAX_RECIPIENTS?" in str(error)


def test_an_unknown_willi_variable_in_the_environment_is_a_warning_with_a_suggestion() -> None:
    warned: list[tuple[str, str | None]] = []
    config = load_config(None, {**MAPPING, "WILLI_MAX_RECIPIENT": "5", "WILLI_MAX_RECIPIENTS": "7"},
                         lambda key, hint: warned.append((key, hint)))
    assert warned == [("WILLI_MAX_RECIPIENT", "WILLI_MAX_RECIPIENTS")]
    assert config.max_recipients == 7


def test_kubernetes_service_links_named_willi_do_not_stop_the_start() -> None:
    links = {
        "WILLI_PORT": "tcp://10.96.0.12:25", "WILLI_SERVICE_HOST": "10.96.0.12",
        "WILLI_SERVICE_PORT": "25", "WILLI_PORT_25_TCP": "tcp://10.96.0.12:25",
        "WILLI_PORT_25_TCP_ADDR": "10.96.0.12", "WILLI_PORT_25_TCP_PROTO": "tcp",
    }
    warned: list[str] = []
    config = load_config(None, {**MAPPING, **links}, lambda key, hint: warned.append(key))
    assert sorted(warned) == sorted(links)
    assert config == load_config(None, MAPPING)
    assert load_config(None, {**MAPPING, **links}) == config  # no callback: silently left out


def test_an_unknown_key_in_the_file_is_refused_too(no_willi_env: Path) -> None:
    (no_willi_env / "willi.env").write_text("WILLI_MAPPING_1=static:a\nWILI_LISTEN=:25\n")
    with pytest.raises(ConfigError, match="WILI_LISTEN"):
        load_config(None, {})


def test_other_environment_variables_are_ignored() -> None:
    assert load(PATH="/usr/bin", LISTEN="nonsense").listen == (("0.0.0.0", 25),)


def test_a_mistyped_password_key_does_not_show_the_password(no_willi_env: Path) -> None:
    error = file_refused(no_willi_env, "WILLI_UPSTREAM_AUTH_PASSWROD=s3cret\n")
    assert "s3cret" not in str(error) and "WILLI_UPSTREAM_AUTH_PASSWORD" in str(error)


def test_a_bad_mysql_uri_is_shown_without_its_password() -> None:
    error = refused(WILLI_MAPPING_1="mysql://willi:s3cret@/no-host")
    assert "s3cret" not in str(error) and "mysql://willi:***@/no-host" in str(error)


def test_a_mysql_uri_without_host_names_its_unix_socket() -> None:
    uri = "mysql://willi:pw@/mail?unix_socket=/run/mysqld/mysqld.sock"
    assert [spec.uri for spec in load(WILLI_MAPPING_1=uri).mappings] == [uri]


def test_masking_hides_passwords_and_nothing_else() -> None:
    assert mask("WILLI_UPSTREAM_AUTH_PASSWORD", "s3cret") == "***"
    assert mask("WILLI_MAPPING_1", "mysql://u:p@ss@db/mail") == "mysql://u:***@db/mail"
    assert mask("WILLI_MAPPING_1", "mysql://u@db/mail") == "mysql://u@db/mail"
    assert mask("WILLI_LISTEN", "host:25") == "host:25"


# --- mappings -------------------------------------------------------------------


def test_mappings_are_ordered_by_number_not_by_text() -> None:
    config = load(
        WILLI_MAPPING_10="static:ten", WILLI_MAPPING_2="static:two", WILLI_MAPPING_1="csv:one.csv"
    )
    assert [(spec.index, spec.uri) for spec in config.mappings] == [
        (1, "csv:one.csv"), (2, "static:two"), (10, "static:ten"),
    ]  # fmt: skip


def test_mapping_options_reach_their_mapping_spec() -> None:
    config = load(
        WILLI_MAPPING_1="mysql://willi:pw@db.example.org:3306/mail?ssl_ca=/etc/ca.pem",
        WILLI_MAPPING_1_QUERY="SELECT server FROM routes WHERE k = %s",
        WILLI_MAPPING_1_CACHE_TTL="2m", WILLI_MAPPING_1_MISS_TTL="5", WILLI_MAPPING_1_STALE_TTL="2h",
        WILLI_MAPPING_2="static:mx.example.org:25", WILLI_MAPPING_2_TLS_VERIFY="false",
    )  # fmt: skip
    mysql, static = config.mappings
    assert mysql == MappingSpec(
        index=1, uri="mysql://willi:pw@db.example.org:3306/mail?ssl_ca=/etc/ca.pem",
        query="SELECT server FROM routes WHERE k = %s", cache_ttl=120.0, miss_ttl=5.0,
        stale_ttl=7200.0,
    )  # fmt: skip
    assert static == MappingSpec(index=2, uri="static:mx.example.org:25", tls_verify=False)


def test_at_least_one_mapping_is_required() -> None:
    with pytest.raises(ConfigError, match="at least one mapping"):
        load_config(None, {})


@pytest.mark.parametrize(
    "env",
    [
        {"WILLI_MAPPING_1": "ldap://x"},
        {"WILLI_MAPPING_1": "csv:"},
        {"WILLI_MAPPING_1": "static:"},
        {"WILLI_MAPPING_1": "mysql://willi@db.example.org"},
        {"WILLI_MAPPING_1": "mysql://db.example.org:port/mail"},
        {"WILLI_MAPPING_0": "static:a"},
        {"WILLI_MAPPING_01": "static:a"},
        {"WILLI_MAPPING_1": "static:a", "WILLI_MAPPING_2_QUERY": "SELECT %s"},
        {"WILLI_MAPPING_1": "static:a", "WILLI_MAPPING_1_QUERY": "SELECT %s"},
        {"WILLI_MAPPING_1": "csv:a.csv", "WILLI_MAPPING_1_TLS_VERIFY": "no"},
        {"WILLI_MAPPING_1": "mysql://u:p@db/mail", "WILLI_MAPPING_1_QUERY": "SELECT 1"},
        {"WILLI_MAPPING_1": "mysql://u:p@db/mail", "WILLI_MAPPING_1_CACHE_TTL": "soon"},
    ],
)
def test_bad_mapping_keys_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, env)
    assert caught.value.key.startswith("WILLI_MAPPING_")


def test_an_unknown_mapping_suffix_in_the_file_is_refused(no_willi_env: Path) -> None:
    assert file_refused(no_willi_env, "WILLI_MAPPING_1_FOO=x\n").key == "WILLI_MAPPING_1_FOO"


# --- combinations ---------------------------------------------------------------


def test_a_certificate_needs_its_key(no_willi_env: Path) -> None:
    cert = readable(no_willi_env, "c.pem")
    error = refused(WILLI_TLS_CERT=cert)
    assert str(error) == "WILLI_TLS_KEY='': expected a readable file, since WILLI_TLS_CERT is set"
    assert refused(WILLI_UPSTREAM_TLS_KEY=cert).key == "WILLI_UPSTREAM_TLS_CERT"


def test_proxy_protocol_needs_the_load_balancers_addresses() -> None:
    assert refused(WILLI_PROXY_PROTOCOL="on").key == "WILLI_PROXY_PROTOCOL_FROM"
    config = load(WILLI_PROXY_PROTOCOL="on", WILLI_PROXY_PROTOCOL_FROM="192.0.2.7")
    assert config.proxy_protocol_from == (ipaddress.ip_network("192.0.2.7/32"),)


def test_an_upstream_proxy_header_turns_xclient_auto_off() -> None:
    assert load(WILLI_UPSTREAM_PROXY_PROTOCOL="v2").xclient == "off"
    assert load(WILLI_UPSTREAM_PROXY_PROTOCOL="off").xclient == "auto"


def test_xclient_required_and_an_upstream_proxy_header_exclude_each_other() -> None:
    error = refused(WILLI_UPSTREAM_PROXY_PROTOCOL="v1", WILLI_XCLIENT="required")
    assert error.key == "WILLI_XCLIENT"


def test_plain_auth_needs_user_and_password() -> None:
    assert refused(WILLI_UPSTREAM_AUTH="plain").key == "WILLI_UPSTREAM_AUTH_USER"
    error = refused(WILLI_UPSTREAM_AUTH="plain", WILLI_UPSTREAM_AUTH_USER="u")
    assert error.key == "WILLI_UPSTREAM_AUTH_PASSWORD"


def test_external_auth_needs_a_client_certificate(no_willi_env: Path) -> None:
    assert refused(WILLI_UPSTREAM_AUTH="external").key == "WILLI_UPSTREAM_TLS_CERT"
    cert, key = readable(no_willi_env, "c.pem"), readable(no_willi_env, "k.pem")
    config = load(
        WILLI_UPSTREAM_AUTH="external", WILLI_UPSTREAM_TLS_CERT=cert, WILLI_UPSTREAM_TLS_KEY=key
    )
    assert (config.upstream_auth, config.upstream_tls_cert) == ("external", cert)
