"""The keyword search, the metered operation: reserve the keywords against the quota, answer
from the cache or the provider, record the search; keywords are given back when anything after
the reservation fails, the provider or not (docs/keyword-search.md).

Two database round trips on the success path: ONE statement gets-or-creates the user, reserves
the keywords against the quota and writes the reservation row (a search in the token's active
organization: gets-or-creates the organization and reserves against ITS quota, the user's row
being provisioned once per warm container as for every route); ONE statement writes the history
row and the request's usage row and confirms the reservation. If the function is killed between
the two, the reservation expires and the reconcile_reservations cron gives the keywords back.

Fixes over the original (docs/original-app.md#d2, #d3, #d13): the quota check and increment are
one atomic statement (`used + n <= limit`, no overshoot); the cache key includes the provider;
cached rows come back in the request's order, and only when they are the provider's shape
with one row per requested keyword (anything else under the key is a logged miss);
`cache_healthy` says whether the write really succeeded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from shared import cache, db, providers, storage
from shared.auth import ActiveOrg, Identity, again_if_erased, provision
from shared.clock import iso_ms, utcnow
from shared.config import get_settings
from shared.db import Conn
from shared.errors import OrganizationNotFoundError, UserNotFoundError
from shared.ids import new_cuid
from shared.models import UserTier
from shared.quotas import Limits, OrgLimits
from shared.repositories import api_usage, org_quota, reservations, search_history, users

ENDPOINT = "/api/keywords"


@dataclass(frozen=True, slots=True)
class Query:
    keywords: list[str]
    match_type: providers.MatchType
    location: str | None  # as the request gave it; normalised here
    language: str


@dataclass(frozen=True, slots=True)
class Origin:
    """Where the request came from, as stored (already reduced by IP_STORAGE)."""

    ip: str | None
    user_agent: str | None


@dataclass(frozen=True, slots=True)
class Result:
    data: list[providers.KeywordData]
    cached: bool
    cache_healthy: bool | None  # None on a hit only: every miss answers it, as the original's
    provider_name: str
    mock: bool


class ProviderFailed(Exception):
    """The provider failed after the reservation; the keywords have been given back."""

    def __init__(self, error: providers.ProviderError, provider_key: str) -> None:
        super().__init__(provider_key)
        self.error = error
        self.provider_key = provider_key


def search(
    identity: Identity, query: Query, *, deadline: float, origin: Origin, started: float
) -> Result:
    """Run one search for `identity`, counted against its active organization's quota when the
    token names one (the caller has checked the permission), else against the user's. Raises
    `TrialExpiredError`, `QuotaExceededError` or `OrganizationNotFoundError` (nothing counted),
    or `ProviderFailed`; any failure after the reservation gives it back before raising."""
    settings = get_settings()
    reserved_at = utcnow()
    hold = reservations.Hold(
        new_cuid(), reserved_at + timedelta(seconds=settings.keyword_reservation_ttl_s)
    )
    count = len(query.keywords)
    org, enforce = identity.org, settings.billing_enabled
    try:
        if org is None:
            tier = _reserve(identity, count, reserved_at, enforce, hold).tier
        else:
            tier = _reserve_for(org, identity, count, reserved_at, enforce, hold).tier
    except db.DatabaseUnavailableError as error:
        # The reservation may have committed, its answer lost or a new user's statements after
        # it failing: given back by its id (nothing, if it was never written).
        if error.outcome_unknown:
            _give_back(identity, hold.id, reserved_at)
        raise
    if org is None:
        storage.mirror_usage(identity.user_id)  # the legacy counter follows (dual/fallback only)

    mock_forced = enforce and tier is UserTier.FREE
    try:
        return _answer(
            identity,
            query,
            mock_forced,
            deadline=deadline,
            origin=origin,
            started=started,
            hold=hold,
        )
    except Exception:
        _give_back(identity, hold.id, reserved_at)
        raise


def _answer(
    identity: Identity,
    query: Query,
    mock_forced: bool,
    *,
    deadline: float,
    origin: Origin,
    started: float,
    hold: reservations.Hold,
) -> Result:
    """Everything after the reservation: the cache or the provider, then the record that
    confirms it. Whatever raises here, `search` gives the reservation back."""
    try:
        provider = providers.mock_provider() if mock_forced else providers.get_provider()
    except providers.ProviderError as error:
        raise ProviderFailed(error, "unknown") from None
    options = providers.SearchOptions(
        match_type=query.match_type,
        location=providers.normalize_location(query.location),
        language=query.language,
        deadline=deadline,
    )
    key = cache.provider_keyword_key(
        query.keywords, options.location, options.language, options.match_type, provider.key
    )
    cached = None if mock_forced else _cached(key, query.keywords, provider.name)
    if cached is not None:
        data = cached
    else:
        try:
            data = provider.keyword_data(query.keywords, options)
        except providers.ProviderError as error:
            raise ProviderFailed(error, provider.key) from None
    name = provider.name

    hit = cached is not None
    fresh = not hit and not mock_forced
    try:
        _record(identity, query, options, provider.key, data, hit, origin, started, hold)
    finally:
        # After the record: a slow cache spends no time the record's round trip needs. Cached
        # even when the record failed: the answer was paid for, the client's retry finds it.
        # A trial's Mock data is never stored: nothing failed, so its miss says True.
        healthy = _store(key, data, provider.name) if fresh else None if hit else True
    return Result(data, hit, healthy, name, name == "Mock" or mock_forced)


def _store(key: str, data: list[providers.KeywordData], provider_name: str) -> bool:
    """Cache a provider's answer; False when it could not be stored (best effort)."""
    metadata: cache.Metadata = {
        "cachedAt": iso_ms(utcnow()),
        "ttl": cache.KEYWORD_TTL_SECONDS,
        "provider": provider_name,
    }
    entry: cache.KeywordEntry = {"data": data, "metadata": metadata}
    return cache.set_json(key, entry)


def _cached(key: str, keywords: list[str], provider: str) -> list[providers.KeywordData] | None:
    """The cached rows in the request's order, or None: a miss, or an entry that is not
    `provider`'s answer (its display name) of one row per requested keyword (logged)."""
    entry = cache.get_json(key, cache.KeywordEntry)
    if entry is None:
        return None
    if problem := cache.answer_problem(entry, provider):
        cache.refuse(key, problem)
        return None
    rows = cache.in_request_order(entry["data"], keywords)
    if rows is None:
        cache.refuse(key, "rows_not_the_requested_keywords")
        return None
    return rows


def _reserve(
    identity: Identity, count: int, now: datetime, enforce: bool, hold: reservations.Hold
) -> users.Usage:
    limits = Limits.from_settings(get_settings())

    def reserve(conn: Conn) -> users.Usage:
        storage.learn_legacy_usage(conn, identity.user_id, now)  # dual: the TS app's count
        usage = users.reserve_keywords(
            conn, identity.user_id, identity.email, count, limits=limits, enforce=enforce,
            now=now, hold=hold,
        )  # fmt: skip
        storage.count_legacy_usage(conn, identity.user_id, count, now)  # dual/fallback
        return usage

    # Dual learns the legacy count first: one transaction, so a refusal changes nothing.
    return (db.transaction if storage.mode() == "dual" else db.run)(reserve)


def _reserve_for(
    org: ActiveOrg,
    identity: Identity,
    count: int,
    now: datetime,
    enforce: bool,
    hold: reservations.Hold,
) -> org_quota.OrgUsage:
    """The organization's reservation. The user's row must exist (the reservation and the
    history row name the user), so it is provisioned first: no query in a warm container."""
    limits = OrgLimits.from_settings(get_settings())

    def reserve(conn: Conn) -> org_quota.OrgUsage:
        return org_quota.reserve_keywords(
            conn, org.id, identity.user_id, count, slug=org.slug, limits=limits,
            enforce=enforce, now=now, hold=hold,
        )  # fmt: skip

    provision(identity)
    return again_if_erased(identity, lambda: db.run(reserve))


def _give_back(identity: Identity, reservation_id: str, reserved_at: datetime) -> None:
    """Release the reservation; a personal one's legacy counter follows (a team has none).
    Safe to repeat (a release gives back what its DELETE of the reservation returned), so it is
    retried on a new connection like a read: the connection that failed the search is often
    dead, and others the same fault reset may be too."""
    if identity.org is not None:
        db.run(lambda conn: reservations.release(conn, reservation_id), idempotent=True)
        return
    user_id = identity.user_id

    def release(conn: Conn) -> None:
        given_back = reservations.release(conn, reservation_id)
        storage.count_legacy_usage(conn, user_id, -given_back, reserved_at)  # dual/fallback

    db.run(release, idempotent=True)
    storage.mirror_usage(user_id)


def _record(
    identity: Identity,
    query: Query,
    options: providers.SearchOptions,
    provider_key: str,
    data: list[providers.KeywordData],
    cache_hit: bool,
    origin: Origin,
    started: float,
    hold: reservations.Hold,
) -> None:
    """The history row (naming the active organization, if any, and the user) and this
    request's usage row, in one statement that also confirms the reservation. Volumes average
    over the keywords that have one (missing data is not 0)."""
    volumes = [volume for row in data if isinstance(volume := row["searchVolume"], int)]
    elapsed = round((time.perf_counter() - started) * 1000)
    search_row = search_history.NewSearch(
        user_id=identity.user_id,
        keywords=query.keywords,
        location=options.location,
        language=options.language,
        match_type=options.match_type,
        provider=provider_key,
        cache_hit=cache_hit,
        response_time=elapsed,
        avg_volume=round(sum(volumes) / len(volumes)) if volumes else 0,
        total_volume=sum(volumes),
        user_agent=origin.user_agent,
        ip_address=origin.ip,
        organization_id=identity.org.id if identity.org is not None else None,
    )
    usage_row = api_usage.Request(
        endpoint=ENDPOINT,
        method="POST",
        status_code=200,
        duration_ms=elapsed,
        user_id=identity.user_id,
        ip_address=origin.ip,
        user_agent=origin.user_agent,
    )
    try:
        recorded = db.run(
            lambda conn: search_history.record_with_usage(
                conn, search_row, usage_row, reservation_id=hold.id
            )
        )
        if recorded is not None:
            return
    except UserNotFoundError:
        # Erased (DELETE /api/me, Clerk's user.deleted) since the reservation. As the saved-search
        # route does: provision again (the new account continues the tombstoned trial) and
        # write the rows once more (and again while further erasures of the user land in
        # between: `again_if_erased`).
        provision(identity, again=True)
    org = identity.org
    if org is None:
        # The reservation went with the account (its keywords into the tombstone, its row by
        # cascade), so the new account counts them: nothing left to confirm.
        again_if_erased(
            identity,
            lambda: db.run(
                lambda conn: search_history.record_with_usage(conn, search_row, usage_row)
            ),
        )
        return
    # The erasure gave the team's hold back (no tombstone keeps it): counted to the team again
    # with the record, as a search arriving now would be, or refused.
    again_if_erased(
        identity,
        lambda: db.transaction(
            lambda conn: _count_again_and_record(conn, identity, org, search_row, usage_row)
        ),
    )


def _count_again_and_record(
    conn: Conn,
    identity: Identity,
    org: ActiveOrg,
    search_row: search_history.NewSearch,
    usage_row: api_usage.Request,
) -> None:
    """A team search whose held keywords its member's erasure gave back, in one transaction:
    reserve them again (the team's limit applies: `QuotaExceededError` when others spent them
    meanwhile, nothing written) and record the search confirming that reservation. A team
    deleted meanwhile counts nothing: the search is its member's own, as one outliving its
    organization is. The reservation's statement locks the member's row, then the
    organization's, as every team search and the erasure do."""
    settings = get_settings()
    now = utcnow()
    hold = reservations.Hold(
        new_cuid(), now + timedelta(seconds=settings.keyword_reservation_ttl_s)
    )
    try:
        org_quota.reserve_keywords(
            conn, org.id, identity.user_id, len(search_row.keywords), slug=org.slug,
            limits=OrgLimits.from_settings(settings), enforce=settings.billing_enabled,
            now=now, hold=hold,
        )  # fmt: skip
    except OrganizationNotFoundError:
        search_history.record_with_usage(conn, search_row, usage_row)
        return
    search_history.record_with_usage(conn, search_row, usage_row, reservation_id=hold.id)
