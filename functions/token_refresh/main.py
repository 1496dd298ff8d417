"""Cloud Function entry point ``refresh_tokens``: fired hourly by Cloud Scheduler (or by hand).

Body (optional JSON, any Content-Type): ``credentials`` (names; default: every credential in the vault
plus every one an active account references), ``force`` (refresh even fresh tokens), ``dry_run`` (report
what is due, call nothing, write nothing). 200 when every credential is fine or needs a human; 500 when a
retry could help. See docs/tokens.md.
"""

from __future__ import annotations

from typing import Any

import functions_framework

from functions.token_refresh import pipeline
from shared.logs import configure_logging

configure_logging()


@functions_framework.http
def refresh_tokens(request: Any) -> tuple[dict[str, Any], int]:
    return pipeline.handle(request)
