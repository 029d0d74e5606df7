"""The command line (SPEC §6), run as real processes: `--version`, `--check`,
`--lookup`, and what a bad configuration does to a start.

Every case runs `python willi.py` in a subprocess with an env file written for
it; nothing here imports Willi's modules except for the version string.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.support.net import LOOPBACK_V4, free_port, port_accepts, wait_until
from tests.support.willi_process import WilliProcess, greets
from willi import __version__

HOSTNAME = "willi.test"
ROUTES = (
    "pattern;server;tls_verify\n"
    "# one key of each kind: full address, domain, parent domain\n"
    "alice@example.com;127.0.0.1:2601;false\n"
    "example.org;127.0.0.1:2602\n"
    ".example.net;mx.example.net:2603;no\n"
)


def base_env(csv: Path, **extra: str) -> dict[str, str]:
    return {
        "WILLI_LISTEN": f"{LOOPBACK_V4}:{free_port()}",
        "WILLI_HOSTNAME": HOSTNAME,
        "WILLI_MAPPING_1": f"csv:{csv}",
        **extra,
    }


def run(
    *args: str, env: dict[str, str], tmp_path: Path, **kwargs: object
) -> subprocess.CompletedProcess:
    return WilliProcess.run_cli(*args, env=env, tmp_path=tmp_path, timeout=20.0, **kwargs)


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.fixture
def routes_csv(tmp_path: Path) -> Path:
    path = tmp_path / "upstreams.csv"
    path.write_text(ROUTES)
    return path


# --- --version ------------------------------------------------------------------


def test_version_prints_the_version_and_exits_0() -> None:
    result = WilliProcess.run_cli("--version")
    assert result.returncode == 0, result
    assert result.stdout.strip() == f"willi {__version__}"
    assert re.fullmatch(r"willi \d+\.\d+\.\d+\S*", result.stdout.strip())


# --- --check ----------------------------------------------------------------------


def test_check_of_a_good_configuration_exits_0_with_one_clear_line(
    routes_csv: Path, tmp_path: Path
) -> None:
    env = base_env(routes_csv)
    result = run("--check", env=env, tmp_path=tmp_path)
    assert result.returncode == 0, result
    # The effective configuration first (as `postconf -n`), then the verdict.
    assert lines(result.stdout) == [f"{key}={value}" for key, value in env.items()] + [
        "willi: configuration ok (1 mappings)"]
    assert result.stderr == ""


def test_check_fails_on_a_csv_mapping_whose_file_is_missing_and_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-upstreams.csv"
    result = run("--check", env=base_env(missing), tmp_path=tmp_path)
    assert result.returncode == 1, result
    output = lines(result.stdout + result.stderr)
    assert len(output) == 1, output
    assert str(missing) in output[0]
    assert "configuration ok" not in output[0]


def test_check_fails_on_a_csv_file_with_a_bad_line_and_names_file_and_line(tmp_path: Path) -> None:
    csv = tmp_path / "broken.csv"
    csv.write_text("pattern;server;tls_verify\nexample.org;127.0.0.1:2602\nthis line has no fields\n")
    result = run("--check", env=base_env(csv), tmp_path=tmp_path)
    assert result.returncode == 1, result
    output = lines(result.stdout + result.stderr)
    assert len(output) == 1, output
    assert f"{csv}:3" in output[0]


def test_a_tls_certificate_file_that_does_not_exist_fails_the_check_with_one_line_naming_the_key(
    routes_csv: Path, tmp_path: Path, pki
) -> None:
    nowhere = tmp_path / "no-such-cert.pem"
    env = base_env(routes_csv, WILLI_TLS_CERT=str(nowhere), WILLI_TLS_KEY=str(pki.willi_key))
    result = run("--check", env=env, tmp_path=tmp_path)
    assert result.returncode != 0, result
    output = lines(result.stdout + result.stderr)
    assert len(output) == 1, output
    assert "WILLI_TLS_CERT" in output[0]
    assert str(nowhere) in output[0]
    assert "configuration ok" not in output[0]


def test_a_tls_certificate_file_that_is_no_certificate_fails_the_check(
    routes_csv: Path, tmp_path: Path, pki
) -> None:
    garbage = tmp_path / "garbage-cert.pem"
    garbage.write_text("this is not a PEM certificate\n")
    env = base_env(routes_csv, WILLI_TLS_CERT=str(garbage), WILLI_TLS_KEY=str(pki.willi_key))
    result = run("--check", env=env, tmp_path=tmp_path)
    assert result.returncode == 1, result
    output = lines(result.stdout + result.stderr)
    assert len(output) == 1, output
    assert str(garbage) in output[0]


def test_check_fails_on_an_unreachable_database_and_never_shows_its_password(
    routes_csv: Path, tmp_path: Path
) -> None:
    closed = free_port()  # nothing listens there any more
    env = base_env(
        routes_csv,
        WILLI_MAPPING_2=f"mysql://willi:secret@127.0.0.1:{closed}/mail",
        WILLI_MAPPING_2_QUERY="SELECT server, tls_verify FROM upstreams WHERE pattern = %s",
    )
    result = run("--check", env=env, tmp_path=tmp_path)
    assert result.returncode == 1, result
    output = lines(result.stdout + result.stderr)
    assert len(output) == 1, output
    assert f"127.0.0.1:{closed}" in output[0]
    assert "secret" not in result.stdout + result.stderr


def test_a_malformed_database_uri_is_refused_without_showing_its_password(
    routes_csv: Path, tmp_path: Path
) -> None:
    env = base_env(routes_csv, WILLI_MAPPING_2="mysql://willi:secret@127.0.0.1:notaport/mail")
    result = run("--check", env=env, tmp_path=tmp_path)
    assert result.returncode != 0, result
    assert lines(result.stderr) and "WILLI_MAPPING_2" in result.stderr
    assert "secret" not in result.stdout + result.stderr


# --- --lookup ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "server", "tls_verify", "key"),
    [
        ("Alice@Example.COM", "127.0.0.1:2601", "false", "alice@example.com"),  # full address
        ("bob@example.org", "127.0.0.1:2602", "true", "example.org"),  # domain
        ("carol@mail.sub.example.net", "mx.example.net:2603", "false", ".example.net"),  # parent
    ],
    ids=["full-address-key", "domain-key", "parent-domain-key"],
)
def test_lookup_prints_server_tls_verify_mapping_and_key_of_a_routed_address(
    routes_csv: Path, tmp_path: Path, address: str, server: str, tls_verify: str, key: str
) -> None:
    result = run("--lookup", address, env=base_env(routes_csv), tmp_path=tmp_path)
    assert result.returncode == 0, result
    output = lines(result.stdout)
    assert len(output) == 1, output
    line = output[0]
    assert f"server={server} " in line
    assert f"tls_verify={tls_verify} " in line
    assert re.search(r"mapping=\S*mapping_1\S*", line), line
    assert str(routes_csv) in line
    assert line.endswith(f"key={key}")


def test_lookup_of_an_unmapped_address_says_no_route_and_exits_1(
    routes_csv: Path, tmp_path: Path
) -> None:
    result = run("--lookup", "nobody@unmapped.example", env=base_env(routes_csv), tmp_path=tmp_path)
    assert result.returncode == 1, result
    output = lines(result.stdout + result.stderr)
    assert len(output) == 1, output
    assert "nobody@unmapped.example" in output[0]
    assert "no route" in output[0]
    assert "server=" not in output[0]


# --- a bad configuration stops the start ------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("WILLI_CLIENT_TIMEOUT", "soon", "duration"),
        ("WILLI_MAX_MESSAGE_SIZE", "20 parsecs", "size"),
        ("WILLI_LISTEN", "127.0.0.1", "host:port"),
        ("WILLI_BARE_LF", "maybe", "reject, pass"),
        ("WILLI_MAX_RECIPIENTS", "0", "whole number"),
    ],
)
def test_a_bad_value_stops_the_start_with_one_line_naming_key_value_and_expectation(
    routes_csv: Path, tmp_path: Path, key: str, value: str, expected: str
) -> None:
    env = base_env(routes_csv, **{key: value})
    port = int(env["WILLI_LISTEN"].rpartition(":")[2]) if key != "WILLI_LISTEN" else free_port()
    result = run(env=env, tmp_path=tmp_path)  # serve: must refuse before listening
    assert result.returncode != 0, result
    err = result.stderr.splitlines()
    assert len(err) == 1, result.stderr
    assert key in err[0]
    assert value in err[0]
    assert expected in err[0]
    assert "Traceback" not in result.stderr
    assert not port_accepts(LOOPBACK_V4, port)


def test_an_unknown_willi_key_is_refused_and_the_nearest_known_key_is_named(
    routes_csv: Path, tmp_path: Path
) -> None:
    env = base_env(routes_csv, WILLI_CLIENT_TIMOUT="5s")
    result = run(env=env, tmp_path=tmp_path)
    assert result.returncode != 0, result
    err = result.stderr.splitlines()
    assert len(err) == 1, result.stderr
    assert "WILLI_CLIENT_TIMOUT" in err[0]
    assert "WILLI_CLIENT_TIMEOUT" in err[0].replace("WILLI_CLIENT_TIMOUT=", "")


def test_an_unknown_variable_in_the_environment_is_a_warning_naming_it_and_the_likely_key(
    routes_csv: Path, tmp_path: Path
) -> None:
    result = run("--check", env=base_env(routes_csv), tmp_path=tmp_path,
                 environ={"WILLI_MAX_MESAGE_SIZE": "1MiB"})
    assert result.returncode == 0, result
    [warning] = [line for line in lines(result.stdout) if "level=warning" in line]
    assert "event=unknown_variable variable=WILLI_MAX_MESAGE_SIZE" in warning
    assert 'hint="did you mean WILLI_MAX_MESSAGE_SIZE?"' in warning
    assert "1MiB" not in warning  # the value may be a secret
    assert lines(result.stdout)[-1] == "willi: configuration ok (1 mappings)"


def test_kubernetes_service_links_for_a_service_called_willi_do_not_stop_the_start(
    routes_csv: Path, tmp_path: Path
) -> None:
    links = {"WILLI_PORT": "tcp://10.96.0.12:25", "WILLI_SERVICE_HOST": "10.96.0.12",
             "WILLI_SERVICE_PORT": "25", "WILLI_PORT_25_TCP_ADDR": "10.96.0.12"}
    with WilliProcess(base_env(routes_csv), tmp_path, environ=links) as willi:
        assert greets(willi.host, willi.port)
        warned = {r["variable"] for r in willi.log_lines() if r.get("event") == "unknown_variable"}
    assert warned == set(links)


@pytest.mark.parametrize("listen", ["256.1.1.1:25", "127.0.0.1:2525,1.2.3:25"])
def test_check_refuses_a_listen_address_that_is_no_address(
    routes_csv: Path, tmp_path: Path, listen: str
) -> None:
    result = run("--check", env=base_env(routes_csv, WILLI_LISTEN=listen), tmp_path=tmp_path)
    assert result.returncode == 1, result
    assert "WILLI_LISTEN" in result.stderr and listen in result.stderr


def test_check_resolves_every_listen_address(routes_csv: Path, tmp_path: Path) -> None:
    env = base_env(routes_csv, WILLI_LISTEN=f"localhost:{free_port()},no-such-host.invalid:2525")
    result = run("--check", env=env, tmp_path=tmp_path)
    assert result.returncode == 1, result
    [line] = lines(result.stdout)
    assert line.startswith("willi: check failed: WILLI_LISTEN='no-such-host.invalid:2525': expected "
                           "an address that resolves"), line


# --- real environment variables override the env file ------------------------------


def test_a_real_environment_variable_overrides_the_env_file(routes_csv: Path, tmp_path: Path) -> None:
    in_file, in_environ = free_port(), free_port()
    env = base_env(routes_csv, WILLI_LISTEN=f"{LOOPBACK_V4}:{in_file}")
    willi = WilliProcess(env, tmp_path, environ={"WILLI_LISTEN": f"{LOOPBACK_V4}:{in_environ}"},
                         wait_ready=False)
    with willi:
        wait_until(lambda: willi.process.poll() is None and greets(LOOPBACK_V4, in_environ), 10.0, 0.02,
                   f"Willi to greet on the environment's port; output:\n{willi.output()}")
        assert not port_accepts(LOOPBACK_V4, in_file)
        listening = [r for r in willi.log_lines() if r.get("event") == "listening"]
        assert [r["address"] for r in listening] == [f"{LOOPBACK_V4}:{in_environ}"]
    assert willi.returncode == 0, willi.output()


def test_a_real_environment_variable_overrides_a_mapping_of_the_env_file(
    routes_csv: Path, tmp_path: Path
) -> None:
    env = base_env(routes_csv)
    result = run("--lookup", "bob@example.org", env=env, tmp_path=tmp_path,
                 environ={"WILLI_MAPPING_1": "static:[::1]:2700"})
    assert result.returncode == 0, result
    assert "server=[::1]:2700 " in result.stdout
    assert "static:[::1]:2700" in result.stdout.partition("mapping=")[2]
    assert str(routes_csv) not in result.stdout


def test_lookup_of_the_domain_of_a_dot_key_finds_no_route(routes_csv: Path, tmp_path: Path) -> None:
    # SPEC §3: ".example.net" matches subdomains only, never example.net itself.
    result = run("--lookup", "dave@example.net", env=base_env(routes_csv), tmp_path=tmp_path)
    assert result.returncode == 1, result
    assert "no route" in result.stdout
