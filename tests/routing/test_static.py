"""static:SERVER answers every key with the same route."""

from __future__ import annotations

import pytest

from willi.errors import MappingError
from willi.routing import MappingSpec, Route
from willi.routing.static import StaticMapping


def test_static_mapping_answers_every_key_with_its_server() -> None:
    mapping = StaticMapping(MappingSpec(3, "static:mx.fallback.example.org:25"))
    assert mapping.get("anyone@example.org") == Route("mx.fallback.example.org:25", True)
    assert mapping.peek(".org") == Route("mx.fallback.example.org:25", True)


def test_static_mapping_takes_tls_verify_from_the_spec() -> None:
    mapping = StaticMapping(MappingSpec(1, "static:mx:25", tls_verify=False))
    assert mapping.get("x") == Route("mx:25", False)


def test_static_mapping_is_named_after_its_spec_and_never_blocks() -> None:
    mapping = StaticMapping(MappingSpec(2, "static:mx"))
    assert mapping.name == "mapping_2=static:mx"
    assert mapping.blocking is False


@pytest.mark.parametrize("uri", ["static:", "static:mx:port", "static:2001:db8::1"])
def test_static_mapping_with_a_bad_server_stops_the_start(uri: str) -> None:
    with pytest.raises(MappingError):
        StaticMapping(MappingSpec(1, uri))
