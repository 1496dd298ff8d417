"""Self-healing authentication: refresh once when the platform rejects a token, retry once.

Every platform client wraps its calls in ``call_with_token``. The client's ``call(token_set)`` raises
``TokenRejectedError`` on the platform's own expired/invalid-token signal (TikTok 40102/40105 in a 200
body, Meta 190, Google 401 ``authError``); the wrapper then asks the ``TokenManager`` for a refreshed set
(locked: concurrent callers share one platform refresh) and calls once more. A second rejection, or a
refresh grant that is itself dead, raises ``AuthError``: the account needs a human to re-authorize.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from shared.errors import AuthError, TokenRejectedError

if TYPE_CHECKING:
    from shared.tokens import TokenManager, TokenSet

__all__ = ["call_with_token", "with_token"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def call_with_token(manager: TokenManager, credential: str, call: Callable[[TokenSet], T]) -> T:
    """``call(token_set)``; on ``TokenRejectedError`` refresh once (shared, locked) and call once more.

    Raises:
        AuthError: the refreshed token was rejected too, or the refresh grant is dead (revoked/expired).
        Anything else ``call`` or the refresh raises (retriable API errors, ``VaultError``) unchanged.
    """
    tokens = manager.get(credential)
    try:
        return call(tokens)
    except TokenRejectedError as first:
        log.warning("%s: %s rejected the access token (%s); refreshing once", credential, first.platform,
                    first.code if first.code is not None else first.status)
    refreshed = manager.refresh_after_rejection(credential, tokens.access_token)
    try:
        return call(refreshed)
    except TokenRejectedError as second:
        raise AuthError(f"{credential}: {second.platform} rejected the freshly refreshed token too "
                        f"({second.code if second.code is not None else second.status}); "
                        "re-authorize the account") from second


#: the name used in docs/architecture.md's module table
with_token = call_with_token
