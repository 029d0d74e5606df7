"""Which keys a reload reports as changed, and which it keeps for a restart."""

from __future__ import annotations

import dataclasses

from willi.config import Config
from willi.reload import RESTART_FIELDS, changed_keys, keep_restart_fields
from willi.routing import MappingSpec

BEFORE = Config(hostname="willi.test", mappings=(MappingSpec(index=1, uri="static:a.test"),))


def test_changed_keys_name_the_willi_keys_and_each_mapping_by_number() -> None:
    after = dataclasses.replace(
        BEFORE, max_message_size=1, client_timeout=1.0,
        mappings=(MappingSpec(index=1, uri="static:a.test"), MappingSpec(index=2, uri="static:b.test")))
    assert changed_keys(BEFORE, after) == ["WILLI_MAX_MESSAGE_SIZE", "WILLI_CLIENT_TIMEOUT",
                                           "WILLI_MAPPING_2"]
    assert changed_keys(BEFORE, BEFORE) == []
    assert changed_keys(after, BEFORE)[-1] == "WILLI_MAPPING_2"  # a mapping removed


def test_restart_fields_keep_their_old_value_and_nothing_else_does() -> None:
    after = dataclasses.replace(BEFORE, listen=(("127.0.0.1", 2525),), workers=4, max_recipients=5)
    kept = keep_restart_fields(BEFORE, after)
    assert (kept.listen, kept.workers, kept.max_recipients) == (BEFORE.listen, 1, 5)
    assert {"listen", "workers"} <= set(RESTART_FIELDS)
    assert set(RESTART_FIELDS) <= {f.name for f in dataclasses.fields(Config)}
