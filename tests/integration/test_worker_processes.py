"""WILLI_WORKERS=N: N reactor processes share the port (SO_REUSEPORT); the
parent forwards SIGHUP and SIGTERM to every one of them (SPEC §1, §6)."""

import os
import signal

from tests.integration.test_relay import deliver, open_session
from tests.support.net import wait_until
from tests.support.willi_process import write_env_file


def count(willi, event: str) -> int:
    return sum(1 for r in willi.log_lines() if r.get("event") == event)


def both_listening(willi) -> None:
    """Both workers serve; their SIGHUP handler is in place once they say `listening`."""
    wait_until(lambda: count(willi, "listening") == 2, 10.0, message="two workers listening")


def two_workers_on_a_csv(launch, tmp_path):
    """An upstream, the CSV file that routes example.org to it, and two workers serving on it."""
    upstream = launch.upstream()
    routes = tmp_path / "routes.csv"
    routes.write_text(f"pattern;server\nexample.org;{upstream.address}\n")
    willi = launch.willi({"WILLI_MAPPING_1": f"csv:{routes}", "WILLI_WORKERS": "2"})
    both_listening(willi)
    return upstream, routes, willi


def test_two_workers_deliver_reload_together_and_stop_together(launch, tmp_path):
    old, new = launch.upstream(), launch.upstream()
    routes = tmp_path / "routes.csv"
    routes.write_text(f"pattern;server\nexample.org;{old.address}\n")
    willi = launch.willi({"WILLI_MAPPING_1": f"csv:{routes}", "WILLI_WORKERS": "2"})
    both_listening(willi)
    workers = willi.children()
    assert len(workers) == 2

    for i in range(6):  # several connections: the kernel spreads them over both workers
        with open_session(willi) as client:
            assert deliver(client, f"before{i}@example.org").code == 250
    assert len(old.wait_for_messages(6)) == 6

    # Same size and mtime, so only SIGHUP (forwarded to both workers) can pick it up.
    stat = routes.stat()
    routes.write_text(f"pattern;server\nexample.org;{new.address}\n".ljust(len(routes.read_text())))
    os.utime(routes, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    willi.signal(signal.SIGHUP)
    wait_until(lambda: count(willi, "reloading") == 2, 5.0,
               message="both workers to reload")
    for i in range(6):
        with open_session(willi) as client:
            assert deliver(client, f"after{i}@example.org").code == 250
    assert len(new.wait_for_messages(6)) == 6 and len(old.messages) == 6

    assert willi.stop() == 0
    assert all(not os.path.exists(f"/proc/{pid}") for pid in workers)


def test_a_worker_restarted_after_a_failed_reload_starts_on_the_last_good_configuration(launch, tmp_path):
    upstream, _, willi = two_workers_on_a_csv(launch, tmp_path)
    # A reload with a mapping that cannot be opened: both workers keep theirs and say so.
    write_env_file(willi.env_file, {**willi.env, "WILLI_MAPPING_1": f"csv:{tmp_path}/missing.csv"})
    willi.signal(signal.SIGHUP)
    wait_until(lambda: count(willi, "reload_failed") == 2, 10.0,
               message="both workers to refuse the reload")
    # A worker dies (the OOM killer, say): the one started in its place serves, the others go on.
    victim = willi.children()[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(willi.children()) == 2 and victim not in willi.children(), 10.0,
               message="the worker restarted")
    assert willi.process.poll() is None
    for i in range(6):  # over both workers, the new one included
        with open_session(willi) as client:
            assert deliver(client, f"after{i}@example.org").code == 250
    assert len(upstream.wait_for_messages(6)) == 6
    assert not [r for r in willi.log_lines() if r.get("event") == "worker_failed"]
    assert willi.stop() == 0


def test_a_worker_that_cannot_restart_does_not_take_the_others_down(launch, tmp_path):
    upstream, routes, willi = two_workers_on_a_csv(launch, tmp_path)
    # The file is broken on disk: the running workers keep their table (SPEC §7) ...
    routes.write_text(routes.read_text() + "no separator here\n")
    wait_until(lambda: count(willi, "mapping_reload_failed") == 2, 10.0,
               message="both workers to keep their table")
    # ... and one of them dies: its replacement cannot load the file and gives up, alone.
    victim = willi.children()[0]
    os.kill(victim, signal.SIGKILL)
    failed = willi.wait_for_log(lambda r: r.get("event") == "worker_failed")
    assert failed["serving"] == "1" and willi.process.poll() is None
    for i in range(4):
        with open_session(willi) as client:
            assert deliver(client, f"still{i}@example.org").code == 250
    assert len(upstream.wait_for_messages(4)) == 4
    assert willi.stop() == 0
