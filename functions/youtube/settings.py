"""YouTube constants: API paths, parts, field masks, metric lists, quota costs and error-reason tables.

Facts come from api-contracts.md §3 ([V]/[C]); the ones marked [U] there are settings in
``shared/config.py`` (daily quota, analytics lag, analytics batch size), not constants here.
"""

from __future__ import annotations

PLATFORM = "youtube"
FUNCTION = "youtube_sync"

# --- YouTube Data API v3 (appended to config.youtube_data_base_url) ---------------------------------
DATA_API_PATH = "/youtube/v3"
CHANNEL_PARTS = "snippet,contentDetails,statistics"
#: contentDetails carries videoId + videoPublishedAt; snippet would only add the playlist-add time
PLAYLIST_ITEM_PARTS = "contentDetails"
VIDEO_PARTS = "snippet,contentDetails,statistics"
#: partial responses (``fields``): same quota, a fraction of the bytes to download and parse
CHANNEL_FIELDS = "items(id,snippet(title),contentDetails(relatedPlaylists(uploads)),statistics)"
PLAYLIST_ITEM_FIELDS = "nextPageToken,pageInfo(totalResults),items(contentDetails(videoId,videoPublishedAt))"
VIDEO_FIELDS = ("items(id,snippet(publishedAt,title,categoryId,liveBroadcastContent,defaultAudioLanguage),"
                "contentDetails(duration),statistics)")
PAGE_SIZE = 50  # playlistItems.list maxResults cap [V]
VIDEOS_PER_CALL = 50  # ids per videos.list call [C]
#: a runaway listing guard: 10,000 pages = 500,000 uploads
MAX_PLAYLIST_PAGES = 10_000
WATCH_URL = "https://www.youtube.com/watch?v={video_id}"

# --- YouTube Analytics API v2 (appended to config.youtube_analytics_base_url) ----------------------
ANALYTICS_PATH = "/v2/reports"
#: ``ids=channel==<UC...>`` (the registered channel), never ``channel==MINE``: a credential authorized for
#: another channel then fails loudly (403) instead of silently loading the wrong channel's figures
ANALYTICS_IDS = "channel=={channel_id}"
#: per-video lifetime totals (dimensions=video)
VIDEO_METRICS = ("views", "likes", "comments", "shares", "estimatedMinutesWatched", "averageViewDuration",
                 "subscribersGained")
VIDEO_SORT = "-views"  # dimensions=video requires a sort ...
VIDEO_MAX_RESULTS = 200  # ... and maxResults <= 200 [C]
#: channel day series (dimensions=day)
DAY_METRICS = ("views", "estimatedMinutesWatched", "likes", "comments", "shares", "subscribersGained",
               "subscribersLost")
#: days per dimensions=day query when a backfill window is requested (one year per call)
DAY_CHUNK_DAYS = 366
#: google-api-python-client sends a GET longer than this as POST + X-HTTP-Method-Override: GET
MAX_GET_URL_LENGTH = 2000

# --- quota ------------------------------------------------------------------------------------------
#: Data API units per call [V]; Analytics queries cost no Data API units (separate quota) [U]
UNITS = {"channels.list": 1, "playlistItems.list": 1, "videos.list": 1, "reports.query": 0}
#: the Data API daily quota resets at midnight Pacific Time [V]
QUOTA_TIMEZONE = "America/Los_Angeles"

# --- error classification: HTTP status + error.errors[].reason, never the message text -------------
#: daily quota gone: never retried, the remaining work is deferred
QUOTA_REASONS = frozenset({"quotaExceeded", "dailyLimitExceeded"})
#: transient throttles and backend hiccups: retried with backoff
RETRIABLE_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded", "backendError", "internalError",
                               "RATE_LIMIT_EXCEEDED"})
#: (a rejected access token, 401 authError & co, is classified by shared.auth's table: refresh once, retry once)
RETRIABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: 403 reasons meaning "this credential may not read this channel": a human must re-authorize it
#: (missing scope, or consent given for another channel)
REAUTH_REASONS = frozenset({"insufficientPermissions", "playlistItemsNotAccessible"})
#: 403 reasons that mean the same only on Analytics ``reports.query`` (``ids=channel==<UC>`` not owned)
ANALYTICS_REAUTH_REASONS = frozenset({"forbidden"})
#: 404 on the uploads playlist of a channel that has no uploads (the playlist is never created)
EMPTY_PLAYLIST_REASONS = frozenset({"playlistNotFound"})
