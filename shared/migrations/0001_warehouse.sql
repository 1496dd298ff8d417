-- 0001_warehouse: the warehouse, schema v1 (documented column by column in docs/warehouse.md).
--
-- Applied by shared.db.migrate() in one transaction, under a pg_advisory_lock, and recorded in
-- social.schema_migrations (which migrate() itself creates). Column names are a contract: add
-- columns in a later NNNN_*.sql file, never rename or drop one here.

CREATE SCHEMA IF NOT EXISTS social;

-- ------------------------------------------------------------------------------------------------
-- Accounts: the registry (accounts.toml) mirrored into the warehouse by shared.registry.sync_registry.
-- ------------------------------------------------------------------------------------------------
CREATE TABLE social.accounts (
    platform    text        NOT NULL CHECK (platform IN ('tiktok', 'facebook', 'instagram', 'youtube')),
    account_id  text        NOT NULL CHECK (account_id <> ''),
    name        text,
    brand       text,
    timezone    text        NOT NULL DEFAULT 'America/Argentina/Buenos_Aires',
    secret      text,                       -- name of the credential in the vault, never its value
    active      boolean     NOT NULL DEFAULT true,
    metadata    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (platform, account_id)
);
CREATE INDEX accounts_brand_idx ON social.accounts (brand);

-- ------------------------------------------------------------------------------------------------
-- Posts: one row per post/video/reel, descriptive attributes only (metrics live in post_metrics_daily).
-- ------------------------------------------------------------------------------------------------
CREATE TABLE social.posts (
    platform          text        NOT NULL CHECK (platform IN ('tiktok', 'facebook', 'instagram', 'youtube')),
    post_id           text        NOT NULL CHECK (post_id <> ''),
    account_id        text        NOT NULL,
    published_at      timestamptz,
    title             text,                 -- title, or the caption/message when the platform has no title
    permalink         text,
    media_type        text,                 -- platform's own vocabulary: VIDEO, REELS, CAROUSEL_ALBUM, short, ...
    duration_seconds  numeric,
    first_seen_at     timestamptz NOT NULL DEFAULT now(),   -- insert-only: never overwritten by upserts
    last_seen_at      timestamptz NOT NULL DEFAULT now(),   -- bookkeeping: set when the row last changed
    extra             jsonb       NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (platform, post_id)
);
CREATE INDEX posts_account_published_idx ON social.posts (platform, account_id, published_at);

-- ------------------------------------------------------------------------------------------------
-- Post metrics: one snapshot per post per day. Counts are lifetime totals "as of" snapshot_date
-- (or as of analytics_through for analytics-API figures, see docs/warehouse.md).
-- ------------------------------------------------------------------------------------------------
CREATE TABLE social.post_metrics_daily (
    platform                   text        NOT NULL CHECK (platform IN ('tiktok', 'facebook', 'instagram', 'youtube')),
    post_id                    text        NOT NULL,
    snapshot_date              date        NOT NULL,
    account_id                 text        NOT NULL,
    views                      bigint,
    likes                      bigint,
    comments                   bigint,
    shares                     bigint,
    saves                      bigint,
    reach                      bigint,
    impressions                bigint,
    watch_time_seconds         numeric,
    avg_view_duration_seconds  numeric,
    analytics_through          date,        -- analytics totals consolidated through this date; NULL = as of snapshot_date
    extra                      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    fetched_at                 timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (platform, post_id, snapshot_date),
    CHECK (analytics_through IS NULL OR analytics_through <= snapshot_date)
);
CREATE INDEX post_metrics_daily_account_idx ON social.post_metrics_daily (platform, account_id, snapshot_date);

-- ------------------------------------------------------------------------------------------------
-- Account metrics: one row per account per metric day (the platform's own day, see docs/warehouse.md).
-- ------------------------------------------------------------------------------------------------
CREATE TABLE social.account_metrics_daily (
    platform            text        NOT NULL CHECK (platform IN ('tiktok', 'facebook', 'instagram', 'youtube')),
    account_id          text        NOT NULL,
    metric_date         date        NOT NULL,
    followers           bigint,
    followers_gained    bigint,
    followers_lost      bigint,
    views               bigint,
    reach               bigint,
    impressions         bigint,
    profile_views       bigint,
    likes               bigint,
    comments            bigint,
    shares              bigint,
    engagements         bigint,
    watch_time_seconds  numeric,
    extra               jsonb       NOT NULL DEFAULT '{}'::jsonb,
    fetched_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (platform, account_id, metric_date)
);

-- ------------------------------------------------------------------------------------------------
-- Run ledger: one row per (run, function, platform, account). Written by shared.runner.
-- account_id '' marks a run-level row that is not about one account (e.g. a quota pre-check).
-- status is the ledger status for every function; outcome is the token-refresh function's own verdict.
-- ------------------------------------------------------------------------------------------------
CREATE TABLE social.sync_runs (
    run_id          text        NOT NULL,
    function        text        NOT NULL,   -- tiktok | meta | youtube | refresh_tokens | cli command
    platform        text        NOT NULL CHECK (platform IN ('tiktok', 'facebook', 'instagram', 'youtube')),
    account_id      text        NOT NULL DEFAULT '',
    trigger         text        NOT NULL DEFAULT 'scheduler' CHECK (trigger IN ('scheduler', 'manual', 'cli')),
    window_start    date,
    window_end      date,
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    status          text        NOT NULL DEFAULT 'running'
                    CHECK (status IN ('running', 'ok', 'failed', 'skipped', 'deferred')),
    outcome         text,                   -- refresh_tokens: refreshed | fresh | needs_reauthorization | error
    api_calls       integer     NOT NULL DEFAULT 0 CHECK (api_calls >= 0),
    quota_units     integer     NOT NULL DEFAULT 0 CHECK (quota_units >= 0),
    rows_inserted   bigint      NOT NULL DEFAULT 0 CHECK (rows_inserted >= 0),
    rows_updated    bigint      NOT NULL DEFAULT 0 CHECK (rows_updated >= 0),
    rows_unchanged  bigint      NOT NULL DEFAULT 0 CHECK (rows_unchanged >= 0),
    error_class     text,
    error_message   text,
    details         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (run_id, function, platform, account_id),
    CHECK (window_start IS NULL OR window_end IS NULL OR window_start <= window_end),
    CHECK (finished_at IS NULL OR finished_at >= started_at)
);
CREATE INDEX sync_runs_started_idx ON social.sync_runs (started_at);
CREATE INDEX sync_runs_account_idx ON social.sync_runs (platform, account_id, started_at DESC);

-- ------------------------------------------------------------------------------------------------
-- Views for analysts.
-- ------------------------------------------------------------------------------------------------

-- Daily account metrics with the registry's brand and account name (metrics of accounts missing from
-- the registry are kept, with NULL brand/name).
CREATE VIEW social.v_account_daily AS
SELECT a.brand,
       a.name AS account_name,
       a.timezone,
       m.platform, m.account_id, m.metric_date,
       m.followers, m.followers_gained, m.followers_lost,
       m.views, m.reach, m.impressions, m.profile_views,
       m.likes, m.comments, m.shares, m.engagements, m.watch_time_seconds,
       m.extra, m.fetched_at
FROM social.account_metrics_daily AS m
LEFT JOIN social.accounts AS a USING (platform, account_id);

-- Every post with its latest snapshot (snapshot columns NULL when the post has none yet).
CREATE VIEW social.v_post_latest AS
SELECT a.brand,
       a.name AS account_name,
       p.platform, p.post_id, p.account_id, p.published_at, p.title, p.permalink, p.media_type,
       p.duration_seconds, p.first_seen_at, p.last_seen_at,
       s.snapshot_date, s.views, s.likes, s.comments, s.shares, s.saves, s.reach, s.impressions,
       s.watch_time_seconds, s.avg_view_duration_seconds, s.analytics_through,
       s.extra AS metrics_extra, s.fetched_at
FROM social.posts AS p
LEFT JOIN social.accounts AS a ON a.platform = p.platform AND a.account_id = p.account_id
LEFT JOIN LATERAL (
    SELECT m.*
    FROM social.post_metrics_daily AS m
    WHERE m.platform = p.platform AND m.post_id = p.post_id
    ORDER BY m.snapshot_date DESC
    LIMIT 1
) AS s ON true;

-- Day-over-day growth of each post from consecutive snapshots. Deltas are NULL on a post's first
-- snapshot; days_since_previous tells how far apart two snapshots are when a day was missed.
CREATE VIEW social.v_post_daily_delta AS
WITH w AS (
    SELECT m.*,
           lag(m.snapshot_date)      OVER p AS previous_snapshot_date,
           lag(m.views)              OVER p AS prev_views,
           lag(m.likes)              OVER p AS prev_likes,
           lag(m.comments)           OVER p AS prev_comments,
           lag(m.shares)             OVER p AS prev_shares,
           lag(m.saves)              OVER p AS prev_saves,
           lag(m.reach)              OVER p AS prev_reach,
           lag(m.impressions)        OVER p AS prev_impressions,
           lag(m.watch_time_seconds) OVER p AS prev_watch_time_seconds
    FROM social.post_metrics_daily AS m
    WINDOW p AS (PARTITION BY m.platform, m.post_id ORDER BY m.snapshot_date)
)
SELECT platform, post_id, account_id, snapshot_date, previous_snapshot_date,
       snapshot_date - previous_snapshot_date AS days_since_previous,
       views, likes, comments, shares, saves, reach, impressions, watch_time_seconds,
       views - prev_views                             AS views_delta,
       likes - prev_likes                             AS likes_delta,
       comments - prev_comments                       AS comments_delta,
       shares - prev_shares                           AS shares_delta,
       saves - prev_saves                             AS saves_delta,
       reach - prev_reach                             AS reach_delta,
       impressions - prev_impressions                 AS impressions_delta,
       watch_time_seconds - prev_watch_time_seconds   AS watch_time_seconds_delta
FROM w;
