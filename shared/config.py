"""Settings: every environment variable the core reads, validated once per container.

A warm container keeps the parsed settings for its lifetime (`get_settings` is cached), so a
request never pays for parsing the environment again. Errors name the variable, show an example
and never echo the value itself: a malformed DATABASE_URL would otherwise leak its password.

A plain dataclass read by a few lines of parsing, not a pydantic-settings model: that model
cost the core alone a sixth of its cold start (pydantic's import and the model's build), and a
cron or the core needs nothing else of pydantic. Values parse as pydantic's lax mode did
(docs/core.md#configuration), except that a number must be finite.
"""

from __future__ import annotations

import math
import os
import types
from collections.abc import Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from enum import StrEnum
from functools import cache
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

from shared.db_url import POSTGRES_SCHEMES, unencoded_userinfo

EXAMPLES = {
    "DATABASE_URL": "postgresql://user:password@ep-cool-name-123-pooler.eu-central-1.aws.neon.tech/keyflash",
    "DIRECT_DATABASE_URL": "postgresql://user:password@ep-cool-name-123.eu-central-1.aws.neon.tech/keyflash",
    "DATABASE_READ_URL": "postgresql://user:password@ep-replica-name-456-pooler.eu-central-1.aws.neon.tech/keyflash",
    "ANALYTICS_DATABASE_URL": "postgresql://analytics:password@ep-replica-name-456-pooler.eu-central-1.aws.neon.tech/keyflash",
    "REPLICA_MAX_LAG_MS": "1000",
    "PREPARED_STATEMENTS": "auto (or on, off)",
    "SLOW_QUERY_MS": "500",
    "DB_CONNECT_TIMEOUT_S": "10",
    "DB_STATEMENT_TIMEOUT_MS": "15000",
    "DB_RETRY_BUDGET_S": "8",
    "DB_POOL_SIZE": "1",
    "DB_IDLE_CHECK_S": "30",
    "DB_APPLICATION_NAME": "keyflash",
    "APP_ENV": "production (or development, test)",
    "APP_URL": "https://keyflash.example.com",
    "ALLOWED_ORIGINS": "https://a.example.com,https://b.example.com",
    "IP_STORAGE": "reduced (or full, none)",
    "TRUST_PROXY": "true, false or cloudflare (unset: true on Vercel only)",
    "CLERK_JWT_KEY": "-----BEGIN PUBLIC KEY-----\\n…\\n-----END PUBLIC KEY-----",
    "CLERK_JWKS_URL": "https://clerk.example.com/.well-known/jwks.json",
    "CLERK_ISSUER": "https://clerk.example.com",
    "CLERK_AUTHORIZED_PARTIES": "https://keyflash.example.com",
    "ADMIN_USER_IDS": "user_2abc,user_2def",
    "ADMIN_ROLE_CLAIM": "metadata.role",
    "UPSTASH_REDIS_REST_URL": "https://eu1-cool-cat-12345.upstash.io",
    "REDIS_TIMEOUT_S": "1.0",
    "HEALTH_DB_MAX_AGE_S": "600",
    "RATE_LIMIT_FAIL_SAFE": "closed (or open)",
    "RATE_LIMIT_HMAC_SECRET": "a random string of at least 32 characters",
    "ACCOUNT_HMAC_SECRET": "a random string of at least 32 characters, never rotated",
    "STORAGE_MODE": "postgres (or dual, fallback)",
    "GOOGLE_ADS_CLIENT_ID": "1234567890-abc.apps.googleusercontent.com (an OAuth client)",
    "GOOGLE_ADS_CLIENT_SECRET": "GOCSPX-… (the OAuth client's secret)",
    "GOOGLE_ADS_DEVELOPER_TOKEN": "the API Center's developer token (basic access or higher)",
    "GOOGLE_ADS_REFRESH_TOKEN": "1//0… (an OAuth refresh token with the adwords scope)",
    "GOOGLE_ADS_CUSTOMER_ID": "123-456-7890 (dashes optional)",
    "GOOGLE_ADS_LOGIN_CUSTOMER_ID": "123-456-7890 (the manager account, if access is through one)",
    "GOOGLE_ADS_API_BASE_URL": "https://googleads.googleapis.com",
    "GOOGLE_ADS_TOKEN_URL": "https://oauth2.googleapis.com/token",
    "STRIPE_WEBHOOK_SECRET": "whsec_… (the endpoint's signing secret from the Stripe dashboard)",
    "STRIPE_SECRET_KEY": "sk_live_… or rk_live_… (a restricted key with Checkout and Portal write)",
    "STRIPE_PRICE_PRO": "price_… (the PRO plan's recurring price)",
    "STRIPE_API_BASE": "https://api.stripe.com",
    "FLAGS_CACHE_SECONDS": "30",
    "CRON_SECRET": "a random string of at least 16 characters (Vercel sends it as a bearer token)",
    "CRON_BATCH_SIZE": "1000",
    "CRON_TIME_MARGIN_MS": "10000",
    "CRON_MAX_DURATION_S": "300 (the function's time limit where the platform does not say)",
    "WEBHOOK_RETRY_MAX_ATTEMPTS": "10",
    "WEBHOOK_RETRY_BASE_DELAY_S": "300",
    "BACKUP_BUCKET": "keyflash-backups",
    "BACKUP_PREFIX": "keyflash/",
    "BACKUP_KEEP": "7",
    "EXPORT_PREFIX": "keyflash-exports/",
    "EXPORT_TTL_DAYS": "7",
    "EXPORT_URL_TTL_S": "300",
    "EXPORT_REQUESTS_PER_HOUR": "5",
    "RETENTION_SEARCH_HISTORY_DAYS": "400 (0 keeps rows forever)",
    "RETENTION_API_USAGE_DAYS": "90 (0 keeps rows forever)",
    "RETENTION_WEBHOOK_EVENTS_DAYS": "30 (0 keeps rows forever)",
    "RETENTION_SYSTEM_METRICS_DAYS": "90 (0 keeps rows forever)",
}


class Environment(StrEnum):
    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


class IpStorage(StrEnum):
    """How client IPs are stored: reduced to /24 (IPv4) or /48 (IPv6) by default (PII rule)."""

    REDUCED = "reduced"
    FULL = "full"
    NONE = "none"


class ProxyTrust(StrEnum):
    """Which request headers may name the client (TRUST_PROXY); the socket peer is the last
    resort in every case."""

    NONE = "none"  # the socket peer only (on Lambda: API Gateway's sourceIp)
    PLATFORM = "platform"  # X-Real-IP, then X-Forwarded-For (Vercel's edge overwrites both)
    CLOUDFLARE = "cloudflare"  # CF-Connecting-IP first, then as PLATFORM


class PreparedStatements(StrEnum):
    """Whether psycopg may prepare statements server-side (see `shared.db`)."""

    AUTO = "auto"
    ON = "on"
    OFF = "off"


class ConfigurationError(RuntimeError):
    """A setting is missing or malformed; the message says which one and how to fix it."""


T = TypeVar("T")


def bounded(
    default: T, *, ge: float | None = None, gt: float | None = None, le: float | None = None
) -> T:
    """A field's default with the bounds `from_environ` checks (for text: its length)."""
    bounds = (("ge", ge), ("gt", gt), ("le", le))
    return field(default=default, metadata={kind: at for kind, at in bounds if at is not None})


@dataclass(frozen=True)
class Settings:
    """The core's configuration (`from_environ` reads it: the names are the upper-case fields).

    Built directly (tests), only the rules across fields are checked; `from_environ` also checks
    each value's type and bounds."""

    database_url: str
    direct_database_url: str | None = None
    # Read scaling (shared.replicas): work declared read-only (`db.read`) goes to DATABASE_READ_URL
    # while it is at most REPLICA_MAX_LAG_MS behind and has replayed the caller's own writes;
    # the admin analytics and metrics read through ANALYTICS_DATABASE_URL when it is set.
    database_read_url: str | None = None
    analytics_database_url: str | None = None
    replica_max_lag_ms: int = bounded(1000, ge=0, le=3_600_000)
    prepared_statements: PreparedStatements = PreparedStatements.AUTO
    slow_query_ms: int = bounded(500, ge=0)
    db_connect_timeout_s: int = bounded(10, ge=1, le=120)
    # At least 1: 0 is PostgreSQL's "no limit"; at most PostgreSQL's own largest value.
    db_statement_timeout_ms: int = bounded(15_000, ge=1, le=2_147_483_647)
    # At most Lambda's longest timeout: a longer budget is cut by the platform, not by us.
    db_retry_budget_s: float = bounded(8.0, gt=0, le=900)
    db_pool_size: int = bounded(1, ge=1, le=100)
    db_idle_check_s: float = bounded(30.0, ge=0)
    db_application_name: str = bounded("keyflash", ge=1, le=63)  # its length

    # HTTP functions
    app_env: Environment = Environment.DEVELOPMENT
    app_url: str = "http://localhost:3000"
    allowed_origins: str = ""
    ip_storage: IpStorage = IpStorage.REDUCED
    trust_proxy: bool | Literal["cloudflare"] | None = None  # unset: see `proxy_trust`
    vercel: bool = False  # VERCEL=1 is set by Vercel's runtime

    # Upstash Redis (REST): cache and rate limits. The SDK has no request timeout; we set one.
    upstash_redis_rest_url: str | None = None
    upstash_redis_rest_token: str | None = None
    redis_timeout_s: float = bounded(1.0, gt=0, le=30)
    upstash_telemetry: bool = False
    privacy_mode: bool = False
    # Redis → Postgres migration phase (shared.storage): where users, usage and saved searches
    # are read and written. dual/fallback also keep the original Redis layout up to date.
    storage_mode: Literal["dual", "fallback", "postgres"] = "postgres"

    # Rate limiting (fixed one-hour windows in Redis), per endpoint and per identity.
    rate_limit_enabled: bool = True
    rate_limit_fail_safe: Literal["open", "closed"] = "closed"
    # No longer the limiter's (anonymous limits count per address, not per user agent): only
    # the tombstones' key when ACCOUNT_HMAC_SECRET is unset, so deployments that set it keep it.
    rate_limit_hmac_secret: str | None = None
    rate_limit_requests_per_hour: int = 10
    # POST /api/keywords/related: above 100 is 100, 0 or less is 30 (functions/keywords_related.py).
    related_keywords_rate_limit_per_hour: int = 30

    # Keys the erasure's tombstones (HMACs of a Clerk id or an email, shared.tombstones).
    # Unset: RATE_LIMIT_HMAC_SECRET is used; one of the two is required in production.
    account_hmac_secret: str | None = None

    # Billing and quotas (docs/original-app.md#tiers-trials-and-quotas): FREE is the 7-day trial,
    # PRO and ENTERPRISE are monthly.
    billing_enabled: bool = False
    trial_keyword_limit: int = bounded(300, ge=0)
    pro_monthly_limit: int = bounded(1000, ge=0)
    enterprise_monthly_limit: int = bounded(10_000, ge=0)
    # An organization's pooled quota (its members' searches in it), per UTC calendar month for
    # every tier (docs/organizations.md#team-quota).
    org_free_monthly_limit: int = bounded(300, ge=0)
    org_pro_monthly_limit: int = bounded(5000, ge=0)
    org_enterprise_monthly_limit: int = bounded(50_000, ge=0)

    # Health: how long a container reuses its last database check, so monitors that probe
    # every minute do not keep a suspended Neon compute awake (?deep=true always checks).
    health_db_max_age_s: float = bounded(600.0, ge=0)
    app_version: str = "1.0.0"
    keyword_api_provider: str = "mock"

    # Clerk session tokens (RS256): a PEM key verifies without network; else JWKS, cached.
    clerk_jwt_key: str | None = None
    clerk_jwks_url: str | None = None
    clerk_issuer: str | None = None
    clerk_authorized_parties: str = ""
    clerk_leeway_s: int = bounded(5, ge=0, le=60)
    admin_user_ids: str = ""
    admin_role_claim: str = "metadata.role"
    admin_role_value: str = "admin"

    # Account webhooks (Clerk, signed by Svix).
    clerk_webhook_secret: str | None = None  # whsec_… from the Clerk dashboard (Svix)

    # Keyword providers (shared/providers): Mock determinism and pacing, DataForSEO credentials.
    mock_provider_seed: int | None = None  # set: the same keyword always gets the same data
    mock_provider_delay_ms: int = bounded(0, ge=0, le=10_000)
    dataforseo_api_login: str | None = None
    dataforseo_api_password: str | None = None
    # DataForSEO's sandbox (https://sandbox.dataforseo.com) answers the same paths with dummy data.
    dataforseo_api_base_url: str = "https://api.dataforseo.com"
    # The account's budget, shared by every container (Google Ads Live: 12/min; 0: unmetered).
    dataforseo_requests_per_minute: int = bounded(12, ge=0, le=10_000)
    # Google Ads API (KEYWORD_API_PROVIDER=google-ads): OAuth client, refresh token, developer
    # token and the account to ask (login customer id: the manager account, if any).
    google_ads_client_id: str | None = None
    google_ads_client_secret: str | None = None
    google_ads_developer_token: str | None = None
    google_ads_refresh_token: str | None = None
    google_ads_customer_id: str | None = None
    google_ads_login_customer_id: str | None = None
    google_ads_api_base_url: str = "https://googleads.googleapis.com"
    google_ads_token_url: str = "https://oauth2.googleapis.com/token"
    # POST /api/keywords: the provider call ends by the database's give-up time for the
    # invocation (its end, Lambda's context or else KEYWORDS_MAX_DURATION_S from the request's
    # start, less `db.INVOCATION_MARGIN_S`) minus PROVIDER_DEADLINE_MARGIN_S, the time the
    # record or the give-back after it needs (at least a second: at 0 the give-back after a
    # provider cut at its deadline would be refused). A cron run's S3 calls, and on Lambda an
    # erasure's, end by the same margin before their database's give-up time. A reservation
    # not confirmed within
    # KEYWORD_RESERVATION_TTL_S (longer than any invocation) is given back by the
    # reconcile_reservations cron.
    keywords_max_duration_s: float = bounded(20.0, gt=0, le=900)
    provider_deadline_margin_s: float = bounded(3.0, ge=1, le=60)
    keyword_reservation_ttl_s: int = bounded(300, ge=60, le=86_400)

    # Stripe (docs/original-app.md#post-apicheckout, #stripe-webhook-handling): webhook signing
    # secret (whsec_…), API key and the PRO price id. STRIPE_API_BASE points checkout and the
    # portal at another Stripe-compatible server (tests' fake, stripe-mock).
    stripe_webhook_secret: str | None = None
    stripe_secret_key: str | None = None
    stripe_price_pro: str | None = None
    stripe_api_base: str = "https://api.stripe.com"

    # Feature flags: how long a warm container reuses the flags it loaded (0: every request).
    flags_cache_seconds: float = bounded(30.0, ge=0, le=3600)

    # Crons (functions/cron, shared/cron). Vercel calls them with `Bearer $CRON_SECRET`; each run
    # works in batches of CRON_BATCH_SIZE rows and stops CRON_TIME_MARGIN_MS before its time
    # limit (Lambda's context says it; elsewhere CRON_MAX_DURATION_S is assumed).
    cron_secret: str | None = None
    cron_batch_size: int = bounded(1000, ge=1, le=100_000)
    cron_time_margin_ms: int = bounded(10_000, ge=0, le=600_000)
    cron_max_duration_s: float = bounded(300.0, gt=0, le=3600)
    # Stripe events the webhook could not apply are retried by the cron with exponential backoff
    # (base * 2^(attempts-1)) until they have been attempted this many times.
    webhook_retry_max_attempts: int = bounded(10, ge=1, le=100)
    webhook_retry_base_delay_s: float = bounded(300.0, gt=0)
    # Logical backups (the backup cron) go to s3://BACKUP_BUCKET/BACKUP_PREFIX…; the newest
    # BACKUP_KEEP are kept. One prefix per deployment: pruning takes what is under it as its own.
    backup_bucket: str | None = None
    backup_prefix: str = "keyflash/"
    backup_keep: int = bounded(7, ge=1, le=1000)
    # Data exports (POST /api/me/export, built by the exports cron) go to the same bucket under
    # EXPORT_PREFIX (beside, never inside, BACKUP_PREFIX); each is kept EXPORT_TTL_DAYS and
    # downloaded through a presigned URL valid EXPORT_URL_TTL_S. A user may ask for
    # EXPORT_REQUESTS_PER_HOUR exports an hour (one open at a time).
    export_prefix: str = "keyflash-exports/"
    export_ttl_days: int = bounded(7, ge=1, le=90)
    export_url_ttl_s: int = bounded(300, ge=60, le=86_400)
    export_requests_per_hour: int = bounded(5, ge=1, le=1000)
    # Retention (the prune cron), in days; 0 keeps rows forever. Webhook events: processed only.
    retention_search_history_days: int = bounded(400, ge=0)
    retention_api_usage_days: int = bounded(90, ge=0)
    retention_webhook_events_days: int = bounded(30, ge=0)
    retention_system_metrics_days: int = bounded(90, ge=0)

    @property
    def is_production(self) -> bool:
        return self.app_env is Environment.PRODUCTION

    @property
    def redis_configured(self) -> bool:
        """Upstash is set up (URL and token): caches, rate limits and the legacy layout."""
        return bool(self.upstash_redis_rest_url and self.upstash_redis_rest_token)

    @property
    def account_hmac_key(self) -> str | None:
        """The tombstones' HMAC key: ACCOUNT_HMAC_SECRET, else RATE_LIMIT_HMAC_SECRET."""
        return self.account_hmac_secret or self.rate_limit_hmac_secret

    @property
    def proxy_trust(self) -> ProxyTrust:
        """Unset: trust forwarding headers only on Vercel, whose edge sets them; on Lambda the
        socket peer is API Gateway's `sourceIp`, while client-sent headers can be forged.
        `cloudflare` is only for an origin that Cloudflare alone can reach: anyone else can
        send CF-Connecting-IP too."""
        if self.trust_proxy == "cloudflare":
            return ProxyTrust.CLOUDFLARE
        trusted = self.vercel if self.trust_proxy is None else self.trust_proxy
        return ProxyTrust.PLATFORM if trusted else ProxyTrust.NONE

    @property
    def cors_origins(self) -> frozenset[str]:
        """The original allow-list (app URL, the product domain, ALLOWED_ORIGINS), trimmed."""
        extra = (origin.strip().rstrip("/") for origin in self.allowed_origins.split(","))
        base = {self.app_url.rstrip("/"), "https://keyflash.buildproven.ai"}
        return frozenset(base | {origin for origin in extra if origin})

    @property
    def authorized_parties(self) -> frozenset[str]:
        return frozenset(p.strip() for p in self.clerk_authorized_parties.split(",") if p.strip())

    @property
    def admin_ids(self) -> frozenset[str]:
        return frozenset(i.strip() for i in self.admin_user_ids.split(",") if i.strip())

    def __post_init__(self) -> None:
        broken = _broken_rules(self)
        if broken:
            raise ConfigurationError("; ".join(broken))

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        """The settings `environ` names (case-insensitively, or by an ALTERNATE_NAMES name);
        every bad variable is explained.

        Two spellings of one name with different values are refused: which one a process
        environment lists last is an accident, so neither may win silently."""
        by_setting = _spellings(environ)
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        problems = []
        for spec in fields(cls):
            given = by_setting.get(spec.name, {})
            try:
                text = _agreed(spec.name, given)
            except ConfigurationError as error:
                problems.append(str(error))
                continue
            try:
                if text is not None:
                    values[spec.name] = _checked(spec, _parse(hints[spec.name], text))
            except ValueError as error:
                where = "".join(f"(set as {n}) " for n in given if n.lower() != spec.name)
                problems.append(_problem(spec.name, f"{where}is invalid ({error})"))
                continue
            if values.get(spec.name) is None and spec.default is MISSING:
                problems.append(_problem(spec.name, "is required"))
        if problems:
            raise ConfigurationError("; ".join(problems))
        return cls(**values)


# Other names a setting is read under: what Vercel's marketplace integrations write into a
# project's environment. Neon: DATABASE_URL (pooled, ours too) and DATABASE_URL_UNPOOLED;
# Upstash (and the retired Vercel KV): KV_REST_API_URL and KV_REST_API_TOKEN, the names
# @upstash/redis's `Redis.fromEnv()` also reads. Their KV_URL and REDIS_URL are redis:// URLs
# and KV_REST_API_READ_ONLY_TOKEN cannot write: none of them is a REST URL or token of ours.
ALTERNATE_NAMES = {
    "DIRECT_DATABASE_URL": ("DATABASE_URL_UNPOOLED",),
    "UPSTASH_REDIS_REST_URL": ("KV_REST_API_URL",),
    "UPSTASH_REDIS_REST_TOKEN": ("KV_REST_API_TOKEN",),
}
_SETTING_OF = {
    alternate.lower(): name.lower()
    for name, alternates in ALTERNATE_NAMES.items()
    for alternate in alternates
}


def setting_of(variable: str) -> str:
    """The field a variable sets: its name in lower case, or the one it is an alternate of."""
    name = variable.lower()
    return _SETTING_OF.get(name, name)


def _spellings(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Each field's variables in `environ` (its name in any case, its alternate names), with
    their values."""
    by_setting: dict[str, dict[str, str]] = {}
    for variable, value in environ.items():
        by_setting.setdefault(setting_of(variable), {})[variable] = value
    return by_setting


def _agreed(field_name: str, given: Mapping[str, str]) -> str | None:
    """The one text the spellings in `given` agree on (None: none given); two different
    values are refused, naming the spellings and never a value."""
    if len(set(given.values())) > 1:
        names = " and ".join(sorted(given))
        raise ConfigurationError(
            _problem(field_name, f"is set as {names}, with different values: keep one")
        )
    return next(iter(given.values()), None)


def read_variable(name: str, environ: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """(the variable that sets `name`, its text) in `environ` (default: this process's), found
    as the settings find it, for tools that use a setting without parsing all of them; None
    when unset or empty. ConfigurationError when two spellings disagree, as the settings would."""
    setting = setting_of(name)
    given = _spellings(os.environ if environ is None else environ).get(setting, {})
    text = _agreed(setting, given)
    if not text:
        return None
    return min(given, key=lambda variable: variable.lower() != setting), text


def every_spelling(
    values: Mapping[str, str], environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """`values` (variable: text), each also under the other spellings of its setting that
    `environ` (default: this process's) holds: what a tool exports for the functions then
    wins over, rather than disagrees with, a variable the developer exported."""
    by_setting = _spellings(os.environ if environ is None else environ)
    exported = dict(values)
    for variable, text in values.items():
        for spelling in by_setting.get(setting_of(variable), {}):
            exported[spelling] = text
    return exported


_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})
_DATABASE_URL_FIELDS = (
    "database_url", "direct_database_url", "database_read_url", "analytics_database_url"
)  # fmt: skip
# Optional: a routed read checks one against DATABASE_URL's rules, `unencoded_userinfo` included,
# and reads from the primary when it breaks one (`shared.replicas`, `url_refused`), not a 500.
_READ_URL_FIELDS = ("database_read_url", "analytics_database_url")
# Every URL setting: a user name or password in it must be percent-encoded (`unencoded_userinfo`;
# the read URLs: when routed).
_URL_FIELDS = (
    *_DATABASE_URL_FIELDS, "app_url", "upstash_redis_rest_url", "clerk_jwks_url",
    "dataforseo_api_base_url", "google_ads_api_base_url", "google_ads_token_url", "stripe_api_base",
)  # fmt: skip
# Secrets pasted from a vendor's dashboard, a terminal or a .env file. None holds whitespace or
# quotes, and the vendors' libraries fail on them as an outage (Stripe: the key is an invalid
# header; Upstash: every call refused) or as a forged signature (Stripe's and Svix's webhook
# checks): they are dropped. Not CRON_SECRET (Vercel sends it exactly as stored) nor the HMAC
# secrets (another key would not find what the old one wrote).
_PASTED_SECRETS = (
    "stripe_secret_key", "stripe_webhook_secret", "clerk_webhook_secret",
    "upstash_redis_rest_token",
)  # fmt: skip


def _parse(hint: Any, text: str) -> Any:
    """`text` as a value of the field type `hint` (the types Settings uses)."""
    if get_origin(hint) in (Union, types.UnionType):
        members = [member for member in get_args(hint) if member is not type(None)]
        for member in members[:-1]:
            try:
                return _parse(member, text)
            except ValueError:
                pass
        return _parse(members[-1], text)
    if get_origin(hint) is Literal:
        if text in get_args(hint):
            return text
        raise ValueError("must be " + _one_of(get_args(hint)))
    if isinstance(hint, type) and issubclass(hint, StrEnum):
        try:
            return hint(text)
        except ValueError:
            raise ValueError("must be " + _one_of([member.value for member in hint])) from None
    if hint is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError("must be true or false")
    if hint is int:
        digits = text.strip()
        whole, dot, zeros = digits.partition(".")  # "10.0" is 10; "10." and "10.5" are not
        if digits.isascii() and (not dot or (zeros != "" and not zeros.strip("0"))):
            try:
                return int(whole)
            except ValueError:
                pass
        raise ValueError("must be a whole number")
    if hint is float:
        try:
            number = float(text) if text.strip().isascii() else math.nan
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise ValueError("must be a number")
        return number
    return text


def _checked(spec: Field[Any], value: Any) -> Any:
    """`value` within the field's bounds (text: its length); a URL without the whitespace
    pasted around it and with its user info percent-encoded; a database URL: a postgresql://
    one (empty: unset); a pasted secret: without surrounding whitespace or quotes."""
    if spec.name in _PASTED_SECRETS:
        value = _unquoted(value)
    if spec.name in _URL_FIELDS:
        value = value.strip()
        problem = unencoded_userinfo(value)
        if problem is not None and spec.name not in _READ_URL_FIELDS:
            raise ValueError(problem)
    if spec.name == "clerk_jwks_url" and value and not _trusted_key_url(value):
        raise ValueError("must be an https:// URL (http:// only for localhost or 127.0.0.1)")
    if spec.name in _DATABASE_URL_FIELDS:
        scheme, separator, _ = value.partition("://")
        if value == "":
            return None
        if not separator or scheme not in POSTGRES_SCHEMES:
            raise ValueError("must be a postgresql:// URL")
    measure, unit = (len(value), " characters") if isinstance(value, str) else (value, "")
    bounds = spec.metadata
    if "ge" in bounds and measure < bounds["ge"]:
        raise ValueError(f"must be at least {bounds['ge']}{unit}")
    if "gt" in bounds and measure <= bounds["gt"]:
        raise ValueError(f"must be greater than {bounds['gt']}")
    if "le" in bounds and measure > bounds["le"]:
        raise ValueError(f"must be at most {bounds['le']}{unit}")
    return value


def _trusted_key_url(url: str) -> bool:
    """Whether the keys that verify every session may come from `url`: over TLS, or from this
    machine (`keyflash dev`, the tests); urllib took anything else as a 500 per request, a
    file, or keys anyone on the path could replace."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on a port that is no number
    except ValueError:
        return False
    if parts.scheme == "http":
        return parts.hostname in ("localhost", "127.0.0.1")
    return parts.scheme == "https" and bool(parts.hostname)


def _unquoted(text: str) -> str:
    """`text` without surrounding whitespace and one pair of surrounding quotes (" or ')."""
    value = text.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1].strip()
    return value


def _one_of(choices: Any) -> str:
    return "one of " + ", ".join(str(choice) for choice in choices)


def _problem(field_name: str, reason: str) -> str:
    """`NAME reason`, with the variable's example when there is one (never its value)."""
    name = field_name.upper()
    example = EXAMPLES.get(name)
    return f"{name} {reason}; example: {name}={example}" if example else f"{name} {reason}"


def _broken_rules(settings: Settings) -> list[str]:
    """The rules across variables that `settings` breaks, each naming the variables."""
    broken = []
    backup, export = settings.backup_prefix, settings.export_prefix
    # The exports sweep deletes every object under EXPORT_PREFIX no export names (backups inside
    # it too), and exports inside BACKUP_PREFIX would be listed among the backups.
    if not export or export.startswith(backup) or backup.startswith(export):
        broken.append(
            "EXPORT_PREFIX must be a non-empty prefix outside BACKUP_PREFIX (and not "
            "containing it), e.g. EXPORT_PREFIX=keyflash-exports/ with BACKUP_PREFIX=keyflash/"
        )
    if settings.is_production and len(settings.account_hmac_key or "") < 32:
        broken.append(
            "ACCOUNT_HMAC_SECRET (or RATE_LIMIT_HMAC_SECRET) must be set to at least 32 "
            "characters in production: it keys the tombstones erasure keeps"
        )
    if settings.storage_mode != "postgres" and not settings.redis_configured:
        broken.append(
            f"STORAGE_MODE={settings.storage_mode} keeps the original Redis layout up to date: "
            "set UPSTASH_REDIS_REST_URL and UPSTASH_REDIS_REST_TOKEN (or STORAGE_MODE=postgres)"
        )
    return broken


@cache
def get_settings() -> Settings:
    """The container's settings, parsed on first use."""
    return Settings.from_environ(os.environ)
