"""The ``Sandbox``: starts every emulator on its own loopback port and exposes the test controls."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from sandbox.core import (
    Clock,
    Emulator,
    FaultRule,
    Faults,
    Ledger,
    Request,
    Response,
    TokenAuthority,
    dataclass_json,
    dispatch,
    json_response,
    serve,
)
from sandbox.world import PLATFORMS, Account, World, WorldSettings

#: fields an admin fault rule may set (the counters `fired`/`seen` are the sandbox's)
FAULT_FIELDS = frozenset(f.name for f in fields(FaultRule)) - {"fired", "seen"}
ADVANCE_KEYS = frozenset({"weeks", "days", "hours", "minutes", "seconds", "milliseconds", "microseconds"})

#: account platform -> OAuth provider that issues its credential
PROVIDER_OF = {"tiktok": "tiktok", "facebook": "meta", "instagram": "meta", "youtube": "google"}


@dataclass
class SandboxSettings:
    """Knobs of the emulated world. Facts the contracts mark [U] (unverified) are settings here."""

    world: WorldSettings = field(default_factory=WorldSettings)
    latency_ms: float = 0.0  # injected on every request
    ledger_max_entries: int | None = 200_000  # recent ledger entries kept (counters stay exact); None = all
    project_id: str = "sde-sandbox"
    project_number: str = "123456789012"
    # OAuth app credentials the emulators accept (clients get them through the env settings)
    tiktok_client_id: str = "sbx-tiktok-app"
    tiktok_client_secret: str = "sbx-tiktok-app-secret"
    meta_app_id: str = "100000000000001"
    meta_app_secret: str = "sbx-meta-app-secret"
    google_client_id: str = "sbx-google-client.apps.googleusercontent.com"
    google_client_secret: str = "sbx-google-client-secret"
    # --- TikTok [U] facts -----------------------------------------------------------------------
    tiktok_error_http_status: int = 200  # business errors as HTTP 200 + non-zero code [C]/[U]
    tiktok_rotate_refresh_token: bool = True  # whether refresh returns a new refresh_token string [U]
    tiktok_out_of_range_code: int = 40002  # code for start_date older than the lookback [U]
    tiktok_lookback_days: int = 60
    tiktok_data_lag_days: int = 1  # T+1: metrics only for dates <= today-1 (UTC)
    tiktok_short_page_probability: float = 0.1  # pages shorter than max_count while has_more [C]
    tiktok_invalid_client_code: int = 40001  # bad client_id/secret on /tt_user/* (PERMISSION_ERROR) [U]
    # calls per account per endpoint per sandbox-clock minute before 40100 (contract §1.6 "40 QPM" [U]); None = off
    tiktok_rate_limit_per_minute: int | None = None
    tiktok_create_time_as_string: bool = False  # video create_time as "1700000000" instead of a number [U]
    # --- Meta [U] facts -------------------------------------------------------------------------
    meta_api_versions: tuple[str, ...] = ("v24.0", "v25.0", "v26.0", "v27.0")
    meta_max_limit: int = 100  # max `limit` on /posts and /media [U]
    meta_ig_default_days: int = 2  # IG insights without since/until [U]
    meta_app_calls_per_hour: int = 2000  # calls that make X-App-Usage call_count reach 100 % [U]
    meta_buc_calls_per_day: int = 4800  # calls per page/IG account that make the BUC usage reach 100 % [U]
    meta_throttle_at_percent: int = 100  # usage percentage at which Graph starts throttling [U]
    meta_omit_zero_shares: bool = True  # post `shares` absent when 0 (else {"count": 0}) [U]
    meta_ig_watch_time_unit: str = "ms"  # IG reels ig_reels_avg_watch_time / *_total_time: "ms" or "s" [U]
    # page insights metric asked with a period it does not support (e.g. month, lifetime): "omit" leaves
    # that metric/period out of `data` (what the sandbox saw documented nowhere), "error" fails with (#100) [U]
    meta_page_unsupported_period: str = "omit"
    # --- Google [U] facts -----------------------------------------------------------------------
    youtube_daily_quota: int = 10_000
    youtube_analytics_lag_days: int = 2  # most recent days absent from day reports [U exact]
    youtube_analytics_max_ids: int = 500  # ids in filters=video==... [C+/U-text]
    google_rotate_refresh_token: bool = False  # Google normally does not return a new refresh token [C]
    google_access_lifetime_s: int = 3599
    google_invalid_client_status: int = 401  # HTTP status of `invalid_client` on the token endpoint [U]
    google_api_key: str = "sbx-google-api-key"  # accepted as `key=` for public YouTube Data reads
    youtube_omit_private_ids: bool = True  # videos.list silently omits private/deleted ids [U]
    # --- Secret Manager [U] facts ---------------------------------------------------------------
    secret_manager_etag_mismatch_status: int = 409  # [U] 409 ABORTED or 400 FAILED_PRECONDITION
    secret_manager_etag_mismatch_code: str = "ABORTED"

    def __post_init__(self) -> None:
        if self.meta_ig_watch_time_unit not in ("ms", "s"):
            raise ValueError("meta_ig_watch_time_unit must be 'ms' or 's'")
        if self.meta_page_unsupported_period not in ("omit", "error"):
            raise ValueError("meta_page_unsupported_period must be 'omit' or 'error'")
        if self.tiktok_rate_limit_per_minute is not None and self.tiktok_rate_limit_per_minute < 1:
            raise ValueError("tiktok_rate_limit_per_minute must be >= 1 or None")


class AdminEmulator(Emulator):
    """Test controls over HTTP (for other processes: the demo, benchmarks, manual poking)."""

    name = "admin"

    def __init__(self, sandbox: Sandbox) -> None:
        super().__init__(sandbox)
        self.route("GET", r"/__sandbox/ledger", "ledger", self._ledger)
        self.route("GET", r"/__sandbox/world", "world", self._world)
        self.route("GET", r"/__sandbox/credentials", "credentials", self._credentials)
        self.route("GET", r"/__sandbox/registry", "registry", self._registry)
        self.route("POST", r"/__sandbox/faults", "faults", self._add_fault)
        self.route("DELETE", r"/__sandbox/faults", "faults", self._clear_faults)
        self.route("POST", r"/__sandbox/clock", "clock", self._clock)
        self.route("POST", r"/__sandbox/tokens/(?P<action>expire|revoke)", "tokens", self._tokens)
        self.route("POST", r"/__sandbox/reset", "reset", self._reset)

    @staticmethod
    def _bad(message: str) -> Response:
        return json_response({"error": message}, 400)

    @staticmethod
    def _body(req: Request) -> dict[str, Any]:
        """The JSON object body; ValueError naming the problem otherwise."""
        try:
            return req.json_object()
        except UnicodeDecodeError as exc:
            raise ValueError("body: not UTF-8 JSON") from exc
        except json.JSONDecodeError as exc:
            raise ValueError(f"body: not valid JSON ({exc.msg})") from exc

    def _ledger(self, req: Request, m: Any) -> Response:
        raw = req.arg("limit")
        limit = None
        if raw is not None:
            if not raw.isdigit():
                return self._bad("limit: expected a non-negative integer")
            limit = int(raw)
        entries = [e for e in self.sb.ledger.entries(req.arg("emulator"), req.arg("endpoint"), req.arg("account"))
                   if e.emulator != "admin"]
        if limit is not None:
            entries = entries[-limit:] if limit else []
        return json_response({"summary": self.sb.ledger.summary(exclude=("admin",)),
                              "max_entries": self.sb.ledger.max_entries, "entries": dataclass_json(entries)})

    def _world(self, req: Request, m: Any) -> Response:
        return json_response({"now": self.sb.clock.now().isoformat(),
                              "accounts": [dataclass_json(a) for a in self.sb.world.accounts()]})

    def _credentials(self, req: Request, m: Any) -> Response:
        return json_response(self.sb.credentials())

    def _registry(self, req: Request, m: Any) -> Response:
        platforms = req.arg("platforms")
        text = self.sb.registry_toml(platforms.split(",") if platforms else None)
        return Response(200, text.encode(), {"Content-Type": "application/toml"})

    def _add_fault(self, req: Request, m: Any) -> Response:
        try:
            body = self._body(req)
            if not body:
                raise ValueError("body: a fault rule object with at least `kind` is required")
            unknown = sorted(set(body) - FAULT_FIELDS)
            if unknown:
                raise ValueError(f"unknown fault rule field(s) {unknown}; expected some of {sorted(FAULT_FIELDS)}")
            if "kind" not in body:
                raise ValueError("kind: required")
            rule = self.sb.faults.add(FaultRule(**body))
        except (TypeError, ValueError) as exc:
            return self._bad(str(exc))
        return json_response(dataclass_json(rule))

    def _clear_faults(self, req: Request, m: Any) -> Response:
        self.sb.faults.clear()
        return json_response({})

    def _clock(self, req: Request, m: Any) -> Response:
        try:
            body = self._body(req)
            unknown = sorted(set(body) - {"set", "advance"})
            if unknown or not body:
                raise ValueError(f"body: expected {{\"set\": iso}} and/or {{\"advance\": {{...}}}}; got keys {unknown}")
            instant = None
            if "set" in body:
                if not isinstance(body["set"], str):
                    raise ValueError("set: expected an ISO-8601 string with a timezone")
                try:
                    instant = datetime.fromisoformat(body["set"])
                except ValueError as exc:
                    raise ValueError(f"set: not an ISO-8601 instant: {body['set']!r}") from exc
                if instant.tzinfo is None:
                    raise ValueError("set: the instant needs a timezone (e.g. +00:00 or Z)")
            delta = None
            if "advance" in body:
                adv = body["advance"]
                if not isinstance(adv, dict) or not adv:
                    raise ValueError(f"advance: expected an object with some of {sorted(ADVANCE_KEYS)}")
                bad = sorted(set(adv) - ADVANCE_KEYS)
                if bad:
                    raise ValueError(f"advance: unknown key(s) {bad}; expected some of {sorted(ADVANCE_KEYS)}")
                for k, v in adv.items():
                    if isinstance(v, bool) or not isinstance(v, (int, float)):
                        raise ValueError(f"advance.{k}: expected a number, got {v!r}")
                delta = adv
        except ValueError as exc:
            return self._bad(str(exc))
        if instant is not None:
            self.sb.clock.set(instant)
        if delta is not None:
            self.sb.clock.advance(**delta)
        return json_response({"now": self.sb.clock.now().isoformat()})

    def _tokens(self, req: Request, m: Any) -> Response:
        try:
            body = self._body(req)
            cred = body.get("credential")
            if not isinstance(cred, str) or not cred:
                raise ValueError("credential: required (a credential name)")
            kind = body.get("kind", "access" if m.group("action") == "expire" else "refresh")
            if kind not in ("access", "refresh", "page"):
                raise ValueError("kind: expected access, refresh or page")
        except ValueError as exc:
            return self._bad(str(exc))
        act = self.sb.tokens.expire if m.group("action") == "expire" else self.sb.tokens.revoke
        return json_response({"affected": act(cred, kind)})

    def _reset(self, req: Request, m: Any) -> Response:
        self.sb.reset()
        return json_response({})


class Sandbox:
    """All emulators in one process. ``Sandbox().start()``; ``.env``; ``.stop()``."""

    def __init__(self, settings: SandboxSettings | None = None) -> None:
        from sandbox.google_oauth import GoogleOAuthEmulator
        from sandbox.meta import MetaEmulator
        from sandbox.secretmanager import SecretManagerEmulator
        from sandbox.tiktok import TikTokEmulator
        from sandbox.youtube import YouTubeAnalyticsEmulator, YouTubeDataEmulator

        self.settings = settings or SandboxSettings()
        self.clock = Clock()
        self.ledger = Ledger(self.settings.ledger_max_entries)
        self.faults = Faults(self.settings.world.seed)
        self.tokens = TokenAuthority(self.clock)
        self.world = World(self.settings.world)
        self.tiktok = TikTokEmulator(self)
        self.meta = MetaEmulator(self)
        self.youtube_data = YouTubeDataEmulator(self)
        self.youtube_analytics = YouTubeAnalyticsEmulator(self)
        self.google_oauth = GoogleOAuthEmulator(self)
        self.secret_manager = SecretManagerEmulator(self)
        self.admin = AdminEmulator(self)
        self.emulators: list[Emulator] = [
            self.tiktok, self.meta, self.youtube_data, self.youtube_analytics, self.google_oauth,
            self.secret_manager, self.admin,
        ]
        self._servers: dict[str, Any] = {}
        self._credentials: dict[str, dict[str, Any]] | None = None

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self, port_base: int | None = None) -> Sandbox:
        """Serve every emulator; ``port_base`` = fixed ports (emulator k on port_base + k), else free ports."""
        try:
            for k, emu in enumerate(self.emulators):
                server, thread = serve(emu, self, port_base + k if port_base else 0)
                self._servers[emu.name] = (server, thread)
        except OSError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for server, thread in self._servers.values():
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
        self._servers.clear()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self) -> None:
        """Back to the initial state: clock, ledger, faults, tokens, emulator state (world is kept)."""
        self.clock.reset()
        self.ledger.reset()
        self.faults.clear()
        self.tokens.reset()
        self._credentials = None
        for emu in self.emulators:
            emu.clear_caches()
            emu.reset()

    def handle(self, emulator: Emulator, req: Request) -> Response:
        return dispatch(self, emulator, req)

    def url(self, name: str) -> str:
        server = self._servers[name][0]
        host, port = server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def env(self) -> dict[str, str]:
        """The settings a client needs to talk to this sandbox instead of the real APIs."""
        s = self.settings
        return {
            "TIKTOK_BASE_URL": self.url("tiktok"),
            "META_BASE_URL": self.url("meta"),
            "YOUTUBE_DATA_BASE_URL": self.url("youtube_data"),
            "YOUTUBE_ANALYTICS_BASE_URL": self.url("youtube_analytics"),
            "GOOGLE_TOKEN_URL": self.url("google_oauth") + "/token",
            "SECRET_MANAGER_ENDPOINT": self.url("secret_manager"),
            "GCP_PROJECT": s.project_id,
            "TIKTOK_CLIENT_ID": s.tiktok_client_id,
            "TIKTOK_CLIENT_SECRET": s.tiktok_client_secret,
            "META_APP_ID": s.meta_app_id,
            "META_APP_SECRET": s.meta_app_secret,
            "GOOGLE_CLIENT_ID": s.google_client_id,
            "GOOGLE_CLIENT_SECRET": s.google_client_secret,
            "SANDBOX_ADMIN_URL": self.url("admin"),
        }

    # -- credentials and registry ----------------------------------------------------------------------
    def provider(self, name: str) -> Any:
        return {"tiktok": self.tiktok, "meta": self.meta, "google": self.google_oauth}[name]

    def credentials(self) -> dict[str, dict[str, Any]]:
        """Initial credential payloads (vault JSON format), one per credential name.

        This is what the browser OAuth step would produce for each account; tokens are real in the
        sandbox's world (they expire and can be revoked)."""
        if self._credentials is None:
            creds: dict[str, dict[str, Any]] = {}
            for name, accounts in self.world.credentials().items():
                provider = PROVIDER_OF[accounts[0].platform]
                creds[name] = self.provider(provider).initial_credential(name, accounts)
            self._credentials = creds
        return self._credentials

    def registry_toml(self, platforms: list[str] | None = None) -> str:
        """The account registry (accounts.toml format) for the world's accounts."""
        lines = ["# Generated by the sandbox: the demo brand group.", ""]
        for a in self.world.accounts():
            if platforms and a.platform not in platforms:
                continue
            lines += _account_toml(a)
        return "\n".join(lines)


def _account_toml(a: Account) -> list[str]:
    q = json.dumps
    return [
        "[[accounts]]",
        f"platform = {q(a.platform)}",
        f"account_id = {q(a.account_id)}",
        f"name = {q(a.name)}",
        f"brand = {q(a.brand)}",
        f"secret = {q(a.credential)}",
        f"timezone = {q(a.timezone)}",
        "",
    ]


__all__ = ["PLATFORMS", "PROVIDER_OF", "Sandbox", "SandboxSettings"]
