"""Token-refresh constants: the function name, the request body fields and the ledger platform mapping."""

from __future__ import annotations

FUNCTION = "refresh_tokens"  # social.sync_runs.function = the entry point name, like youtube_sync

#: request body fields (all optional) and their JSON types
BODY_FIELDS: dict[str, type] = {"credentials": list, "force": bool, "dry_run": bool}

#: ``social.sync_runs.platform`` of a credential not referenced by any account (the column only knows
#: account platforms): the main platform its provider serves
PROVIDER_PLATFORM = {"tiktok": "tiktok", "meta": "facebook", "google": "youtube"}
