"""gunicorn settings of the anchor (bench/api_list.py) that its command line cannot give.

The product's own, from ``web/cli.py``:

- the keep-alive limit: the same ``pre_request`` hook, with the limit the product reads
  from the same environment (SUPPORTGATE_API_KEEPALIVE_REQUESTS);
- the worker class: gthread with new connections spread evenly over the workers, and its
  ``pre_fork`` and ``child_exit`` hooks (web/balance.py).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.config import Settings
from web.balance import balanced_worker
from web.cli import close_after

_limit = Settings().api_keepalive_requests
if _limit:
    pre_request = close_after(_limit)

# Slots for up to 64 workers, SUPPORTGATE_API_WORKERS' upper bound.
worker_class, _hooks = balanced_worker(64)
pre_fork = _hooks["pre_fork"]
child_exit = _hooks["child_exit"]
