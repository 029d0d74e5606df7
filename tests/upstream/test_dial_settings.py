"""From the configuration to how an upstream connection opens: the PROXY
header that names the client, AUTH's credentials kept out of every repr."""

from __future__ import annotations

from willi.cli import dial_settings
from willi.config import load_config
from willi.proxy_protocol import encode_v1, encode_v2
from willi.smtp.upstream import ClientInfo
from willi.upstream.dialer import proxy_header

MAPPING = {"WILLI_MAPPING_1": "static:127.0.0.1:2525"}
CLIENT = ClientInfo("192.0.2.7", 40123, "client.example", True, "198.51.100.1", 25)


def test_the_proxy_header_names_the_client_and_the_address_it_connected_to() -> None:
    assert proxy_header("v1", CLIENT) == b"PROXY TCP4 192.0.2.7 198.51.100.1 40123 25\r\n"
    assert proxy_header("v2", CLIENT) == encode_v2(("192.0.2.7", 40123), ("198.51.100.1", 25))
    assert proxy_header("off", CLIENT) == b""


def test_without_a_known_local_address_the_header_names_the_unspecified_one() -> None:
    v6 = ClientInfo("2001:db8::7", 1000)
    assert proxy_header("v1", v6) == encode_v1(("2001:db8::7", 1000), ("::", 0))
    assert proxy_header("v1", ClientInfo("192.0.2.7", 1000)) == b"PROXY TCP4 192.0.2.7 0.0.0.0 1000 0\r\n"


def test_upstream_proxy_protocol_turns_xclient_off_and_reaches_the_dialer() -> None:
    settings = dial_settings(load_config(None, {**MAPPING, "WILLI_UPSTREAM_PROXY_PROTOCOL": "v2"}))
    assert (settings.proxy_protocol, settings.xclient) == ("v2", "off")


def test_auth_plain_credentials_reach_the_dialer_and_no_repr_shows_the_password() -> None:
    config = load_config(None, {**MAPPING, "WILLI_UPSTREAM_AUTH": "plain", "WILLI_UPSTREAM_AUTH_USER": "willi",
                                "WILLI_UPSTREAM_AUTH_PASSWORD": "s3cret-pw", "WILLI_UPSTREAM_STARTTLS": "required"})
    settings = dial_settings(config)
    assert settings.auth == "plain" and settings.credentials is not None
    assert (settings.credentials.user, settings.credentials.password) == ("willi", "s3cret-pw")
    assert "s3cret-pw" not in repr(settings) and "s3cret-pw" not in str(settings)
