"""The per-IP connection rate (Postfix's anvil): counted with a clock the test
holds, per address, per window, in bounded memory."""

from __future__ import annotations

import pytest

from willi.anvil import ConnectionRate


def test_the_limit_th_connection_passes_and_the_next_is_refused() -> None:
    rate = ConnectionRate(limit=3, time_unit=60)
    assert [rate.connect("192.0.2.1", now=t) for t in (0, 1, 2, 3)] == [True, True, True, False]


def test_addresses_are_counted_apart() -> None:
    rate = ConnectionRate(limit=1, time_unit=60)
    assert rate.connect("192.0.2.1", 0) and rate.connect("192.0.2.2", 0)
    assert not rate.connect("192.0.2.1", 1)


def test_the_window_starts_at_the_first_connection_and_a_new_one_opens_after_it() -> None:
    rate = ConnectionRate(limit=2, time_unit=60)
    assert rate.connect("192.0.2.1", 10) and rate.connect("192.0.2.1", 20)
    assert not rate.connect("192.0.2.1", 69.9)
    assert rate.connect("192.0.2.1", 70.0)  # 60 s after the window opened at 10
    assert rate.count("192.0.2.1", 70.0) == 1


def test_refused_attempts_count_so_a_hammering_client_stays_refused_for_its_window() -> None:
    rate = ConnectionRate(limit=2, time_unit=60)
    for t in range(50):
        rate.connect("192.0.2.1", t)
    assert rate.count("192.0.2.1", 50) == 50
    assert not rate.connect("192.0.2.1", 59)


def test_zero_means_no_limit_and_keeps_nothing() -> None:
    rate = ConnectionRate(limit=0)
    assert all(rate.connect("192.0.2.1", 0) for _ in range(10_000))
    assert len(rate) == 0


def test_expired_windows_are_dropped_as_new_ones_come() -> None:
    rate = ConnectionRate(limit=5, time_unit=60)
    for i in range(1000):
        rate.connect(f"10.0.{i // 256}.{i % 256}", now=i * 0.01)
    assert len(rate) == 1000
    rate.connect("192.0.2.1", now=70)
    assert len(rate) == 1


def test_memory_is_bounded_by_max_clients_forgetting_the_oldest_window() -> None:
    rate = ConnectionRate(limit=1, time_unit=60, max_clients=100)
    assert rate.connect("192.0.2.1", 0)
    for i in range(10_000):
        rate.connect(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", now=1)
        assert len(rate) <= 100
    assert rate.connect("192.0.2.1", 2)  # forgotten: starts afresh


@pytest.mark.parametrize("args", [dict(limit=-1), dict(limit=1, time_unit=0), dict(limit=1, max_clients=0)])
def test_nonsense_settings_are_refused(args: dict) -> None:
    with pytest.raises(ValueError):
        ConnectionRate(**args)


def test_ipv6_clients_are_counted_per_slash_84_as_postfix_does() -> None:
    rate = ConnectionRate(limit=2, time_unit=60)
    assert rate.connect("2001:db8::1", 0) and rate.connect("2001:db8::ffff:1", 0)  # one /84
    assert not rate.connect("2001:db8::abcd", 0)
    assert rate.connect("2001:db8:0:0:1000::1", 0)  # the next /84
    assert rate.count("2001:db8::5", 0) == 3
