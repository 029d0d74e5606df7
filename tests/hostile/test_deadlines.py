"""Per-record deadlines (issue 9 item 3), with the clock in the test's hand.

The session reports what the client did and asks when its timer should
fire; here the conversation is played against a fake `now`. The slowloris
of the issue (one byte every 3 seconds) must never extend a deadline.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from willi.deadlines import DATA_RATE, IDLE, RECORD, ClientDeadline, DeadlineSettings, Stress

T = 300.0
STRESS_T = 10.0
SETTINGS = DeadlineSettings(timeout=T, stress_timeout=STRESS_T, min_data_rate=500)


class Load:
    """The session count seen by Stress, changed by the test."""

    def __init__(self, stressed: bool = False) -> None:
        self.stressed = stressed

    def __call__(self) -> bool:
        return self.stressed


def deadline(at: float = 0.0, load: Load | None = None, **changes: object) -> ClientDeadline:
    base = SETTINGS if not changes else DeadlineSettings(**{**_fields(SETTINGS), **changes})
    return ClientDeadline(base, load or Load(), at)


def _fields(s: DeadlineSettings) -> dict[str, object]:
    return {name: getattr(s, name) for name in DeadlineSettings.__slots__}


def trickle(d: ClientDeadline, start: float, every: float, body: bool = False) -> float:
    """Feed one byte every `every` seconds until the deadline expires; when it did."""
    now = start
    for _ in range(100_000):
        if d.expired(now):
            return now
        if body:
            d.body_bytes(1, now)
        else:
            d.command_bytes(now)
        now += every
    raise AssertionError("never expired")


# --- command records -------------------------------------------------------------
def test_slowloris_one_byte_every_3_s_never_extends_the_lines_deadline() -> None:
    d = deadline(at=0.0)
    assert d.due(0.0) == T
    now = 0.0
    while now < T:
        d.command_bytes(now)  # a byte that does not complete the line
        assert d.due(now) == T  # ... moves nothing
        assert d.expired(now) is None
        now += 3.0
    assert d.expired(T) == RECORD


def test_the_slowloris_is_gone_after_the_timeout_not_after_its_last_byte() -> None:
    assert trickle(deadline(at=0.0), 0.0, 3.0) == T


def test_each_completed_line_starts_a_new_record() -> None:
    d = deadline(at=0.0)
    d.line_completed(250.0)
    assert d.due(251.0) == 250.0 + T
    assert d.expired(T) is None and d.expired(250.0 + T) == RECORD


def test_with_record_deadline_off_every_byte_rearms_the_idle_timeout() -> None:
    d = deadline(at=0.0, record_deadline=False)
    d.command_bytes(299.0)
    assert d.due(299.0) == 299.0 + T
    assert d.expired(300.0) is None and d.expired(599.0) == IDLE


# --- the body --------------------------------------------------------------------
def test_a_body_starts_with_the_timeout_in_hand() -> None:
    d = deadline(at=0.0)
    d.body_started(10.0)
    assert d.due(10.0) == 10.0 + T


def test_a_body_slowloris_earns_only_n_over_rate_per_chunk() -> None:
    d = deadline(at=0.0)
    d.body_started(0.0)
    ended = trickle(d, 0.0, 3.0, body=True)
    # 100 bytes trickled in 300 s earned 100/500 s: it dies right after T.
    assert T <= ended <= T + 3.0
    assert d.expired(ended) == DATA_RATE


def test_a_body_at_the_minimum_rate_lives_as_long_as_it_flows() -> None:
    d = deadline(at=0.0)
    d.body_started(0.0)
    for second in range(1, 3600):  # an hour at 600 octets/s (> 500)
        d.body_bytes(600, float(second))
        assert d.expired(float(second)) is None
    d.body_ended(3600.0)
    assert d.due(3600.0) == 3600.0 + T


def test_earned_time_never_runs_more_than_the_timeout_ahead() -> None:
    d = deadline(at=0.0)
    d.body_started(0.0)
    d.body_bytes(100 * 1024 * 1024, 1.0)  # 100 MB at once would earn 58 hours
    assert d.due(1.0) == 1.0 + T


def test_a_slow_start_is_forgiven_within_the_grace_window() -> None:
    d = deadline(at=0.0)
    d.body_started(0.0)
    d.body_bytes(10, 290.0)  # nearly the whole grace spent waiting
    assert d.expired(290.0) is None
    d.body_bytes(500 * 300, 291.0)  # then it streams: time earned back
    assert d.due(291.0) == 291.0 + T


def test_without_a_minimum_rate_each_body_chunk_rearms() -> None:
    d = deadline(at=0.0, min_data_rate=0)
    d.body_started(0.0)
    d.body_bytes(1, 299.0)
    assert d.due(299.0) == 299.0 + T


# --- Willi's own waits ---------------------------------------------------------------
def test_while_willi_holds_the_client_it_is_never_late_and_gets_a_full_timeout_after() -> None:
    d = deadline(at=0.0)
    d.hold(100.0)
    d.hold(150.0)  # the upstream is slow and the client's replies pile up
    assert d.due(1000.0) == math.inf and d.expired(1000.0) is None and d.held
    d.release(1000.0)
    assert d.due(1000.0) == math.inf  # one hold remains
    d.release(2000.0)
    assert d.due(2000.0) == 2000.0 + T and not d.held


def test_a_release_without_a_hold_changes_nothing() -> None:
    d = deadline(at=0.0)
    d.release(100.0)
    assert d.due(100.0) == T


# --- stress --------------------------------------------------------------------------
def test_under_stress_a_new_record_gets_the_stress_timeout() -> None:
    d = deadline(at=0.0, load=Load(stressed=True))
    assert d.due(0.0) == STRESS_T
    assert trickle(d, 0.0, 3.0) == 12.0  # first check at or after 10 s
    assert d.expired(12.0) == RECORD + " (under stress)"


def test_stress_shrinks_a_running_deadline_and_its_end_restores_it() -> None:
    load = Load()
    d = deadline(at=0.0, load=load)
    d.command_bytes(5.0)
    load.stressed = True
    assert d.due(6.0) == STRESS_T
    load.stressed = False
    assert d.due(6.0) == T


def test_under_stress_a_body_earns_time_only_up_to_the_stress_timeout() -> None:
    load = Load(stressed=True)
    d = deadline(at=0.0, load=load)
    d.body_started(0.0)
    d.body_bytes(10**9, 1.0)
    assert d.due(1.0) == 1.0 + STRESS_T


def test_the_stress_timeout_never_lengthens_a_short_client_timeout() -> None:
    d = deadline(at=0.0, load=Load(stressed=True), timeout=5.0)
    assert d.due(0.0) == 5.0


def test_stress_is_80_percent_of_max_connections_by_default() -> None:
    stress = Stress(max_connections=1000)
    assert not stress(799) and stress(800) and stress(1000)
    assert Stress(max_connections=3, threshold=100)(3) and not Stress(3, 100)(2)


def test_the_tls_handshake_is_bounded_by_the_stress_timeout_under_stress() -> None:
    assert SETTINGS.handshake_timeout(False) == 30.0
    assert SETTINGS.handshake_timeout(True) == STRESS_T


# --- any sequence ------------------------------------------------------------------------
_EVENTS = st.lists(st.tuples(
    st.sampled_from(["bytes", "line", "body", "chunk", "end", "hold", "release", "stress"]),
    st.floats(min_value=0.0, max_value=50.0), st.integers(min_value=0, max_value=10**6)), max_size=60)


@settings(database=None, max_examples=300)
@given(_EVENTS, st.booleans())
def test_a_deadline_is_never_more_than_one_timeout_ahead_and_bytes_never_move_it(events, per_record):
    load = Load()
    d = deadline(at=0.0, load=load, record_deadline=per_record)
    now = 0.0
    for name, step, n in events:
        now += step
        before = d.due(now)
        if name == "bytes":
            d.command_bytes(now)
            if per_record:
                assert d.due(now) == before
        elif name == "line":
            d.line_completed(now)
        elif name == "body":
            d.body_started(now)
        elif name == "chunk":
            d.body_bytes(n, now)
        elif name == "end":
            d.body_ended(now)
        elif name == "hold":
            d.hold(now)
        elif name == "release":
            d.release(now)
        else:
            load.stressed = not load.stressed
        due = d.due(now)
        assert due == math.inf or due <= now + (STRESS_T if load.stressed else T)
        assert (d.expired(now) is None) == (now < due)


@pytest.mark.parametrize("rate", [1, 500, 10**6])
def test_a_body_below_the_rate_always_dies_within_timeout_plus_its_size_over_rate(rate: int) -> None:
    d = deadline(at=0.0, min_data_rate=rate)
    d.body_started(0.0)
    ended = trickle(d, 0.0, 3.0, body=True)
    assert ended <= T + (ended / 3.0 + 1) / rate + 3.0


def test_the_deadline_module_is_sans_io() -> None:
    import ast
    import pathlib

    import willi.deadlines

    tree = ast.parse(pathlib.Path(willi.deadlines.__file__).read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert names <= {"__future__", "math", "dataclasses", "typing"}, names


# --- the keys ------------------------------------------------------------------------------
def _load(**keys: str):
    from willi.config import load_config

    return load_config(None, {"WILLI_HOSTNAME": "mx.example.org", "WILLI_MAPPING_1": "static:mx.example.org",
                              **keys})


def test_the_deadline_keys_default_to_postfixs_values_and_parse() -> None:
    config = _load()
    assert (config.client_record_deadline, config.stress_client_timeout, config.stress_threshold,
            config.min_data_rate) == (True, 10.0, 80, 500)
    config = _load(WILLI_CLIENT_RECORD_DEADLINE="off", WILLI_STRESS_CLIENT_TIMEOUT="5s",
                   WILLI_STRESS_THRESHOLD="95", WILLI_MIN_DATA_RATE="0")
    assert (config.client_record_deadline, config.stress_client_timeout, config.stress_threshold,
            config.min_data_rate) == (False, 5.0, 95, 0)


@pytest.mark.parametrize("key, value", [("WILLI_STRESS_THRESHOLD", "0"), ("WILLI_STRESS_THRESHOLD", "101"),
                                        ("WILLI_STRESS_CLIENT_TIMEOUT", "0"), ("WILLI_MIN_DATA_RATE", "fast"),
                                        ("WILLI_CLIENT_RECORD_DEADLINE", "sometimes")])
def test_a_bad_deadline_key_stops_the_start_naming_it(key: str, value: str) -> None:
    from willi.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        _load(**{key: value})
    assert caught.value.key == key


def test_fed_rearms_only_when_the_line_count_moved() -> None:
    d = deadline(at=0.0)
    d.fed(0, 100.0)  # a partial line
    assert d.due(100.0) == T
    d.fed(1, 200.0)  # it completed
    assert d.due(200.0) == 200.0 + T
    d.fed(1, 290.0)  # the bytes of an over-long line being skipped: the count stays
    assert d.due(290.0) == 200.0 + T
