"""The effective configuration, as `--check` prints it: every key whose
value differs from its default, one `KEY=value` line each, in a form an env
file takes back, passwords masked. What `postconf -n` is to Postfix: the
answer to "what did I actually change?" without reading every file.
"""

from __future__ import annotations

import socket
from typing import Any

from willi import config as config_table
from willi.config import Config
from willi.routing import MappingSpec

_MAPPING_OPTIONS = (("QUERY", "query"), ("CACHE_TTL", "cache_ttl"), ("MISS_TTL", "miss_ttl"),
                    ("STALE_TTL", "stale_ttl"), ("TLS_VERIFY", "tls_verify"))


def effective_config(config: Config) -> list[str]:
    """Every key whose value differs from its default, as `KEY=value` lines an
    env file takes back, passwords masked: what `postconf -n` is to Postfix."""
    defaults = Config(hostname=socket.getfqdn())
    lines = []
    for key in config_table.KEYS:
        value = getattr(config, key.field)
        if value != getattr(defaults, key.field) and value is not None:
            lines.append(f"{key.name}={config_table.mask(key.name, _written(key.parse, value))}")
    plain = MappingSpec(index=0, uri="")
    for spec in config.mappings:
        name = f"WILLI_MAPPING_{spec.index}"
        lines.append(f"{name}={config_table.mask(name, spec.uri)}")
        for suffix, field_name in _MAPPING_OPTIONS:
            value = getattr(spec, field_name)
            if value != getattr(plain, field_name):
                parse = config_table.parse_bool if isinstance(value, bool) else config_table.parse_duration
                lines.append(f"{name}_{suffix}={_written(parse, value)}")
    return lines


def _written(parse: Any, value: Any) -> str:
    """A parsed value written back as its key's parser reads it."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if parse in (config_table.parse_duration, config_table.parse_duration_or_off):
        return f"{value:g}s"
    if parse is config_table.parse_size:
        for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
            if value % size == 0:
                return f"{value // size}{unit}"
        return str(value)
    if parse is config_table.parse_listen:
        return ",".join(_env_address(address) for address in value)
    if parse is config_table.parse_address:
        return _env_address(value)
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    return str(value)


def _env_address(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
