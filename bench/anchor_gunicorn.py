"""gunicorn settings of the anchor (bench/api_list.py) that its command line cannot give.

The product's keep-alive limit: the same ``pre_request`` hook as ``web/cli.py``, with the
limit the product reads from the same environment (SUPPORTGATE_API_KEEPALIVE_REQUESTS).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.config import Settings
from web.cli import close_after

_limit = Settings().api_keepalive_requests
if _limit:
    pre_request = close_after(_limit)
