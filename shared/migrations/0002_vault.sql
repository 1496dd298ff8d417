-- 0002_vault: the local token vault (shared.vault.LocalVault) and the token lifecycle state.
--
-- The local vault mirrors Secret Manager's model so both backends behave the same: one "secret" per
-- credential, numbered versions (1, 2, ...), reads of the newest ENABLED version, and retention that
-- disables then destroys old versions (a DESTROYED version keeps its row but loses its payload).
-- Payloads are the credential JSON (docs/architecture.md "Credentials"): this table holds secrets, so
-- the local vault is for laptops, tests and single-host installs; production uses Secret Manager.

CREATE SCHEMA IF NOT EXISTS social;

-- One row per credential: the version counter. Writers bump it with
-- INSERT .. ON CONFLICT DO UPDATE .. RETURNING, which row-locks it until commit, so concurrent writers of
-- one credential get distinct, gap-free version numbers.
CREATE TABLE social.vault_secrets (
    name          text        PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_-]{1,255}$'),
    last_version  integer     NOT NULL DEFAULT 1 CHECK (last_version >= 1),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE social.vault_versions (
    name          text        NOT NULL REFERENCES social.vault_secrets (name) ON DELETE CASCADE,
    version       integer     NOT NULL CHECK (version >= 1),
    payload       text,                    -- credential JSON; NULL once DESTROYED
    state         text        NOT NULL DEFAULT 'ENABLED' CHECK (state IN ('ENABLED', 'DISABLED', 'DESTROYED')),
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    disabled_at   timestamptz,
    destroyed_at  timestamptz,
    PRIMARY KEY (name, version),
    CHECK ((state = 'DESTROYED') = (payload IS NULL))
);
CREATE INDEX vault_versions_enabled_idx ON social.vault_versions (name, version DESC) WHERE state = 'ENABLED';

-- Token lifecycle state per credential (never a token): the last verdict of the refresher or of a
-- self-heal, so `python -m shared.cli tokens list` can show what needs a human.
CREATE TABLE social.token_state (
    credential          text        PRIMARY KEY,
    provider            text        CHECK (provider IN ('tiktok', 'meta', 'google')),
    outcome             text        NOT NULL CHECK (outcome IN ('refreshed', 'fresh', 'needs_reauthorization', 'error')),
    error_class         text,
    error_message       text,
    access_expires_at   timestamptz,
    refresh_expires_at  timestamptz,
    warnings            jsonb       NOT NULL DEFAULT '[]'::jsonb,
    last_checked_at     timestamptz NOT NULL DEFAULT now(),
    last_refreshed_at   timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now()
);
