"""Cloud Function entry point ``youtube_sync``: sync every active YouTube channel of the registry.

Body (optional JSON, any Content-Type): ``accounts``, ``start_date``/``end_date`` (a backfill of channel
day metrics), ``dry_run``, ``full_rescan`` (re-list every upload instead of stopping at the first known).
See docs/youtube.md; the HTTP contract is shared/runner.py.
"""

from __future__ import annotations

from typing import Any

import functions_framework

from functions.youtube import pipeline
from shared.logs import configure_logging
from shared.runner import run_http

configure_logging()


@functions_framework.http
def youtube_sync(request: Any) -> tuple[dict[str, Any], int]:
    return run_http(request, function="youtube_sync", platforms=("youtube",), sync_account=pipeline.sync_account,
                    extra_fields={"full_rescan": bool}, plan_run=pipeline.plan_run)
