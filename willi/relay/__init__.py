"""The relay layer, sans-IO: one transaction between a client and an upstream.

`machine.Relay` takes typed events (`events`) and returns typed commands
(`commands`) through one transition table; its BDAT handlers are in
`chunking`, its states in `states`; `ledger.Ledger` keeps one transaction's
account and builds its records. `willi.session` executes the commands on real connections; the
tests in tests/relay/ play whole conversations against the machine alone.
"""

from willi.relay.machine import Relay, RelayError, State, demote_421
from willi.relay.states import S

__all__ = ["Relay", "RelayError", "S", "State", "demote_421"]
