"""The Router: mapping order, key order, first hit wins, failures end the chain."""

from __future__ import annotations

import pytest

from tests.routing.test_csvmap import ListLogger
from willi.errors import MappingError
from willi.routing import NOT_CACHED, MappingSpec, NotCached, Route
from willi.routing.csvmap import CsvMapping
from willi.routing.router import Answer, Router, build_mappings
from willi.routing.static import StaticMapping
from willi.smtp.address import Address


class FakeMapping:
    """A Mapping that answers from a dict and records every key it was asked."""

    def __init__(
        self,
        name: str,
        table: dict[str, Route] | None = None,
        *,
        blocking: bool = False,
        fail: bool = False,
        cached: dict[str, Route | None] | None = None,
    ) -> None:
        self.name = name
        self.blocking = blocking
        self.table = table or {}
        self.fail = fail
        self.cached = cached  # what peek knows; None: everything is cached
        self.asked: list[str] = []
        self.peeked: list[str] = []
        self.calls: list[str] = []

    def get(self, key: str) -> Route | None:
        self.asked.append(key)
        if self.fail:
            raise MappingError(f"{self.name} is down")
        return self.table.get(key)

    def peek(self, key: str) -> Route | None | NotCached:
        self.peeked.append(key)
        if self.cached is None:
            return self.table.get(key)
        return self.cached.get(key, NOT_CACHED)

    def reload(self) -> None:
        self.calls.append("reload")

    def check(self) -> None:
        self.calls.append("check")
        if self.fail:
            raise MappingError(f"{self.name} is down")

    def close(self) -> None:
        self.calls.append("close")


A = Route("a.example.net")
B = Route("b.example.net")


def router(*mappings: FakeMapping, delimiter: str = "+") -> Router:
    return Router(mappings, delimiter=delimiter, hostname="proxy.example.net")


def test_within_one_mapping_keys_are_tried_in_order() -> None:
    first = FakeMapping("m1")
    assert router(first).resolve(Address("User+x", "Example.org")) is None
    assert first.asked == ["user+x@example.org", "user@example.org", "example.org", ".org"]


def test_all_keys_of_one_mapping_are_tried_before_the_next_mapping() -> None:
    first, second = FakeMapping("m1"), FakeMapping("m2", {"user@example.org": B})
    answer = router(first, second).resolve(Address("user", "example.org"))
    assert answer == Answer(B, "m2", "user@example.org")
    assert first.asked == ["user@example.org", "example.org", ".org"]


def test_first_mapping_that_answers_wins_even_with_a_less_specific_key() -> None:
    first = FakeMapping("m1", {".org": A})
    second = FakeMapping("m2", {"user@example.org": B})
    assert router(first, second).resolve(Address("user", "example.org")) == Answer(A, "m1", ".org")
    assert second.asked == []


def test_more_specific_key_wins_within_a_mapping() -> None:
    mapping = FakeMapping("m1", {"example.org": A, "user@example.org": B})
    assert router(mapping).resolve(Address("user+tag", "example.org")) == Answer(B, "m1", "user@example.org")


def test_failing_mapping_ends_the_lookup_and_later_mappings_are_not_asked() -> None:
    broken, later = FakeMapping("m1", fail=True), FakeMapping("m2", {"example.org": A})
    with pytest.raises(MappingError):
        router(broken, later).resolve(Address("user", "example.org"))
    assert later.asked == []


def test_no_mapping_answering_gives_none() -> None:
    assert router(FakeMapping("m1"), FakeMapping("m2")).resolve(Address("u", "example.org")) is None


def test_postmaster_without_domain_routes_as_postmaster_at_hostname() -> None:
    mapping = FakeMapping("m1", {"proxy.example.net": A})
    answer = router(mapping).resolve(Address("PostMaster", ""))
    assert answer == Answer(A, "m1", "proxy.example.net")
    assert mapping.asked[0] == "postmaster@proxy.example.net"


def test_other_address_without_domain_routes_nowhere_and_asks_nothing() -> None:
    mapping = FakeMapping("m1", {"proxy.example.net": A, "abuse": A})
    assert router(mapping).resolve(Address("abuse", "")) is None
    assert mapping.asked == []


def test_null_address_routes_nowhere() -> None:
    assert router(FakeMapping("m1", {"": A})).resolve(Address("", "")) is None


def test_resolve_fast_peeks_at_blocking_mappings_and_says_not_cached() -> None:
    static = FakeMapping("m1")
    database = FakeMapping("m2", {"example.org": A}, blocking=True, cached={"u@example.org": None})
    later = FakeMapping("m3", {"example.org": B})
    result = router(static, database, later).resolve_fast(Address("u", "example.org"))
    assert result is NOT_CACHED
    assert database.asked == []  # never the blocking get
    assert database.peeked == ["u@example.org", "example.org"]
    assert later.asked == []


def test_resolve_fast_answers_from_cache_without_blocking() -> None:
    database = FakeMapping("m1", blocking=True, cached={"u@example.org": None, "example.org": A})
    assert router(database).resolve_fast(Address("u", "example.org")) == Answer(A, "m1", "example.org")
    assert database.asked == []


def test_resolve_fast_uses_get_on_non_blocking_mappings() -> None:
    csv_like = FakeMapping("m1", {"example.org": A})
    assert router(csv_like).resolve_fast(Address("u", "example.org")) == Answer(A, "m1", "example.org")
    assert csv_like.peeked == []


def test_resolve_fast_returns_none_when_every_mapping_knows_there_is_no_match() -> None:
    database = FakeMapping("m1", blocking=True, cached={})
    database.cached = None  # everything known, nothing matches
    assert router(database).resolve_fast(Address("u", "example.org")) is None


def test_resolve_fast_stops_at_a_failing_mapping() -> None:
    broken, later = FakeMapping("m1", fail=True), FakeMapping("m2", {"example.org": A})
    with pytest.raises(MappingError):
        router(broken, later).resolve_fast(Address("u", "example.org"))
    assert later.asked == []


def test_needs_worker_only_when_some_mapping_blocks() -> None:
    assert not router(FakeMapping("m1")).needs_worker
    assert router(FakeMapping("m1"), FakeMapping("m2", blocking=True)).needs_worker


def test_reload_and_close_reach_every_mapping() -> None:
    first, second = FakeMapping("m1"), FakeMapping("m2")
    r = router(first, second)
    r.reload()
    r.close()
    assert first.calls == second.calls == ["reload", "close"]


def test_check_propagates_a_mapping_error() -> None:
    with pytest.raises(MappingError):
        router(FakeMapping("m1"), FakeMapping("m2", fail=True)).check()


def test_build_mappings_makes_csv_and_static_mappings_in_order(tmp_path) -> None:
    table = tmp_path / "upstreams.csv"
    table.write_text("pattern;server;tls_verify\nexample.org;mx.example.org\n")
    specs = [MappingSpec(1, f"csv:{table}"), MappingSpec(2, "static:fallback.example.net")]
    mappings = build_mappings(specs, ListLogger())
    assert [type(m) for m in mappings] == [CsvMapping, StaticMapping]
    answer = Router(mappings, "", "proxy").resolve(Address("u", "example.org"))
    assert answer == Answer(Route("mx.example.org"), mappings[0].name, "example.org")


def test_build_mappings_refuses_an_unknown_scheme_by_name() -> None:
    with pytest.raises(MappingError, match="ldap"):
        build_mappings([MappingSpec(1, "ldap://directory.example.org")], ListLogger())


class OutageMapping(FakeMapping):
    """A database that is down: keys it lately knew as misses raise StaleMiss,
    keys with a stale route still answer, anything else fails."""

    def __init__(self, name: str, stale_misses: set[str], stale_routes: dict[str, Route]) -> None:
        super().__init__(name)
        self.stale_misses = stale_misses
        self.stale_routes = stale_routes

    def get(self, key: str) -> Route | None:
        from willi.errors import StaleMiss

        self.asked.append(key)
        if key in self.stale_routes:
            return self.stale_routes[key]
        if key in self.stale_misses:
            raise StaleMiss(f"{self.name} is down")
        raise MappingError(f"{self.name} is down")


def test_during_an_outage_a_stale_domain_route_answers_after_a_stale_address_miss() -> None:
    outage = OutageMapping("db", {"user@example.org"}, {"example.org": A})
    later = FakeMapping("later", {"example.org": Route("never")})
    answer = Router([outage, later], "", "willi.test").resolve(Address("user", "example.org"))
    assert answer == Answer(A, "db", "example.org") and later.asked == []


def test_during_an_outage_stale_misses_alone_still_fail_the_lookup() -> None:
    keys = {"user@example.org", "example.org", ".org"}
    later = FakeMapping("later", {"example.org": Route("never")})
    with pytest.raises(MappingError):
        Router([OutageMapping("db", keys, {}), later], "", "willi.test").resolve(Address("user", "example.org"))
    assert later.asked == []
