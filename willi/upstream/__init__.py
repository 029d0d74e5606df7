"""The upstream side: one link per upstream connection (link.py), the dialer
that opens one for a route (dialer.py), the pool of idle links kept for the
next session (pool.py), which targets failed recently (health.py) and the
name cache (resolver.py). Imports run one way: dialer → pool, link, health,
resolver; nothing here imports the dialer but this file.
"""

from willi.upstream.dialer import DialSettings, Dialer
from willi.upstream.link import UpstreamLink

__all__ = ["DialSettings", "Dialer", "UpstreamLink"]
