"""Users: Clerk accounts extended with a tier, a trial and monthly keyword usage.

Every write is a single statement where one can do it, so concurrent Lambdas never lose updates:
get-or-create is an `INSERT … ON CONFLICT`, usage is a conditional `UPDATE … RETURNING`.

The request paths' hot statements (read by id, create, get-or-create, update, increment, monthly
reset, the keyword reservation) are Core statements built and compiled once
(`shared.db.HotStatement`), run on the driver connection; their rows become `User` objects
without the ORM's loading machinery (`shared.repositories.rows`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypedDict, Unpack, cast

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    Subquery,
    Table,
    Text,
    and_,
    bindparam,
    case,
    column,
    delete,
    exists,
    false,
    func,
    literal,
    or_,
    select,
    true,
    update,
)
from sqlalchemy import table as sql_table
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.exc import IntegrityError

from shared.clock import month_start, next_month_start, utcnow
from shared.db import Conn, HotStatement, execute_hot, violated_constraint
from shared.errors import (
    AccountDeletedError,
    EmailInUseError,
    QuotaExceededError,
    TrialExpiredError,
    UserNotFoundError,
)
from shared.models import UserTier, UTCDateTime
from shared.models.reservations import KeywordReservation
from shared.models.users import User
from shared.quotas import TRIAL_LENGTH, Limits, trial_end_sql, trial_over, usage_view
from shared.repositories import reservations, tombstones
from shared.repositories.reservations import Hold
from shared.repositories.rows import RowMapper, db_time
from shared.telemetry import database_operation

_EMAIL_CONSTRAINTS = ("users_email_key", "users_email_lower_key")


class UserChanges(TypedDict, total=False):
    """Columns a partial update may set (the original repository's list, plus the trial start)."""

    email: str
    tier: UserTier
    keyword_searches_this_month: int
    monthly_reset_at: datetime
    stripe_customer_id: str | None
    stripe_subscription_id: str | None
    subscription_status: str | None
    subscription_plan: str | None
    subscription_ends_at: datetime | None
    trial_started_at: datetime | None
    trial_ends_at: datetime | None
    clerk_updated_at: datetime | None


PLACEHOLDER_DOMAIN = "keyflash.local"


def placeholder_email(user_id: str) -> str:
    """What we store when Clerk gives no email (the original's fallback,
    docs/original-app.md#d19; a user.updated with none left releases the stored one), or when
    the user's address belongs to another account. Unique
    only exactly (`users_email_lower_key`, migration 0016), as the case-sensitive ids are."""
    return f"{user_id}@{PLACEHOLDER_DOMAIN}"


def is_placeholder(email: str) -> bool:
    return email.lower().endswith(f"@{PLACEHOLDER_DOMAIN}")


@dataclass(frozen=True, slots=True)
class Usage:
    """Counters after an increment."""

    this_month: int
    total: int
    monthly_reset_at: datetime
    tier: UserTier


@dataclass(frozen=True, slots=True)
class SubscriptionMetrics:
    total_users: int
    free_users: int
    pro_users: int
    enterprise_users: int
    active_subscriptions: int


_USERS = cast(Table, User.__table__)
_user_from = RowMapper(User, list(_USERS.columns))


def _db_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return db_time(value)
    if isinstance(value, UserTier):
        return value.value
    return value


def _new_user_columns() -> dict[str, Any]:
    """A new user's column values as bound parameters (`_new_user_params` fills them)."""
    now = bindparam("p_now", type_=UTCDateTime())
    return {
        "id": bindparam("p_id", type_=Text()),
        "email": bindparam("p_email", type_=Text()),
        "tier": bindparam("p_tier", type_=_USERS.c.tier.type),
        "monthly_reset_at": now,
        "created_at": now,
        "updated_at": now,
        "trial_started_at": bindparam("p_trial_started_at", type_=UTCDateTime()),
        "trial_ends_at": bindparam("p_trial_ends_at", type_=UTCDateTime()),
    }


def _continuing_trial(values: dict[str, Any]) -> Subquery:
    """Make a new user's `values` continue the trial tombstoned under its keys (`p_keys`, id or
    email): its end and its usage, looked up once. Returns the lookup, the INSERT's FROM."""
    tombstone = tombstones.found_under(bindparam("p_keys", type_=ARRAY(Text())))
    values["trial_ends_at"] = func.least(
        values["trial_ends_at"], tombstone.c.ends, type_=UTCDateTime()
    )
    values["keyword_searches_total"] = tombstone.c.used
    return tombstone


def _insert_from(
    table: Any, values: dict[str, Any], source: Subquery, *where: ColumnElement[bool]
) -> Any:
    """`INSERT INTO table (<values' columns>) SELECT <values> FROM source [WHERE where]`."""
    columns = _by_column(values)
    rows = select(*columns.values()).select_from(source).where(*where)
    return insert(table).from_select(list(columns), rows)


def _new_user_params(user_id: str, email: str, tier: UserTier, now: datetime) -> dict[str, Any]:
    """The parameters of `_new_user_columns`: a FREE user starts a trial `now`. Built per
    keyword search, so the time is converted once."""
    at = db_time(now)
    trial = tier is UserTier.FREE
    return {
        "p_id": user_id,
        "p_email": email,
        "p_tier": tier.value,
        "p_now": at,
        "p_trial_started_at": at if trial else None,
        "p_trial_ends_at": at + TRIAL_LENGTH if trial else None,
        "p_keys": tombstones.keys(user_id, email),
    }


def _by_column(values: dict[str, Any]) -> dict[str, Any]:
    """Attribute-keyed values keyed by the `users` column names instead (Core statements)."""
    return {User.__mapper__.attrs[key].columns[0].name: value for key, value in values.items()}


def _placeholder_exact(email: Any) -> ColumnElement[Any]:
    """`users_email_lower_key`'s second key column: a placeholder itself, else ''."""
    domain = f"@{PLACEHOLDER_DOMAIN}"
    return case((func.right(func.lower(email), len(domain)) == domain, email), else_="")


def _email_held_elsewhere(user_id: Any, email: Any) -> ColumnElement[bool]:
    """Whether a row of another id holds `email` by `users_email_lower_key`'s rule (real
    addresses case-insensitively, placeholders exactly; an exact match, `users_email_key`,
    matches it too), served by that index. Writes check this first instead of letting the
    index refuse them: a unique violation's DETAIL puts the other account's email in the
    server's log (on Neon, the provider's)."""
    holder = _USERS.alias("holder")
    return exists().where(
        holder.c.id != user_id,
        func.lower(holder.c.email) == func.lower(email),
        _placeholder_exact(holder.c.email) == _placeholder_exact(email),
    )


_EMAIL_HELD = HotStatement(
    lambda: select(
        _email_held_elsewhere(bindparam("p_id", type_=Text()), bindparam("p_email", type_=Text()))
    )
)


def _email_taken(conn: Conn, user_id: str, email: str) -> bool:
    """Whether another account holds `email` (a refused write's one extra read)."""
    row = execute_hot(conn, _EMAIL_HELD, {"p_id": user_id, "p_email": email}).fetchone()
    return row is not None and bool(row[0])


def _is_email_conflict(error: IntegrityError) -> bool:
    return violated_constraint(error) in _EMAIL_CONSTRAINTS


def _raise_if_email_taken(error: IntegrityError) -> None:
    if _is_email_conflict(error):
        raise EmailInUseError() from None


@database_operation("createUser")
def create(
    conn: Conn,
    user_id: str,
    email: str,
    *,
    tier: UserTier = UserTier.FREE,
    clerk_updated_at: datetime | None = None,
    now: datetime | None = None,
) -> User:
    """Insert a user; FREE users start a 7-day trial (or continue their tombstoned one). A
    taken email raises `EmailInUseError`: the INSERT checks it (`_email_held_elsewhere`), the
    index refuses only an insert of it racing this one. `clerk_updated_at`: the Clerk event's
    time, when a Clerk event creates the user."""
    params = _new_user_params(user_id, email, tier, now or utcnow())
    params["p_clerk_updated_at"] = None if clerk_updated_at is None else db_time(clerk_updated_at)
    statement = _CREATE_TRIAL if tier is UserTier.FREE else _CREATE
    try:
        row = execute_hot(conn, statement, params).fetchone()
    except IntegrityError as error:  # a racing insert of the email, not committed when checked
        _raise_if_email_taken(error)
        raise
    if row is None:  # the INSERT's only condition: no other account holds the email
        raise EmailInUseError()
    return _user_from(row)


def _create_statement(*, continuing: bool) -> Any:
    values = _new_user_columns()
    values["clerk_updated_at"] = bindparam("p_clerk_updated_at", type_=UTCDateTime())
    free = ~_email_held_elsewhere(values["id"], values["email"])
    if continuing:
        statement = _insert_from(_USERS, values, _continuing_trial(values), free)
    else:
        columns = _by_column(values)
        statement = insert(_USERS).from_select(list(columns), select(*columns.values()).where(free))
    return statement.returning(*_USERS.columns)


_CREATE_TRIAL = HotStatement(partial(_create_statement, continuing=True))
_CREATE = HotStatement(partial(_create_statement, continuing=False))


@database_operation("findUserById")
def get(conn: Conn, user_id: str, *, lock: bool = False) -> User | None:
    """`lock`: `FOR UPDATE`, so concurrent changes to the row are decided one after another."""
    row = execute_hot(conn, _GET_LOCKED if lock else _GET, {"id": user_id}).fetchone()
    return None if row is None else _user_from(row)


def locked_row(conn: Conn, user_id: str) -> User | None:
    """The user `FOR UPDATE`, for a repository deciding a change under the row lock (logged
    as that repository's operation, not as a read of its own)."""
    row = execute_hot(conn, _GET_LOCKED, {"id": user_id}).fetchone()
    return None if row is None else _user_from(row)


def update_columns(conn: Conn, user_id: str, values: dict[Any, Any]) -> bool:
    """`UPDATE users SET <values> WHERE id = user_id`; `values` keyed by `User` attributes, the
    statement compiled once per set of columns.

    A Stripe customer in `values` is written only when no other user nor any organization
    holds it (checked in the same statement, `customer_unless_held`), else the row keeps the
    customer it had and the rest is written. False: that happened. Two transactions writing one
    customer to two rows of a table at once cannot see each other's row: the unique index then
    fails the second to commit, as before."""
    keys = frozenset(attribute.key for attribute in values)
    params = {attribute.key: _db_value(value) for attribute, value in values.items()}
    params["user_id"] = user_id
    if "stripe_customer_id" not in keys:
        execute_hot(conn, _update_statement(keys, returning=False), params)
        return True
    statement = _COLUMN_UPDATES.get(keys)
    if statement is None:
        statement = HotStatement(partial(_update_guarded, keys))
        _COLUMN_UPDATES[keys] = statement
    row = execute_hot(conn, statement, params).fetchone()
    return row is None or row[0] == params["stripe_customer_id"]


_COLUMN_UPDATES: dict[frozenset[str], HotStatement] = {}


def customer_unless_held(table: Table, row_id: Any, customer: Any) -> ColumnElement[Any]:
    """The value a row's `stripeCustomerId` takes when a billing event links `customer`: it,
    unless another row holds it, a user's or an organization's (`table` is one of the two);
    then the row's own. A member's personal event paid through the organization's customer so
    never gives the member the organization's portal. Each table's `stripeCustomerId` unique
    index serves the check, in the statement that writes."""
    holders = []
    for name in ("users", "organizations"):
        other = sql_table(name, column("id"), column("stripeCustomerId")).alias(f"{name}_holder")
        mine = [other.c.id != row_id] if name == table.name else []
        holders.append(exists().where(other.c.stripeCustomerId == customer, *mine))
    return case((or_(*holders), table.c.stripeCustomerId), else_=customer)


def _update_guarded(keys: frozenset[str]) -> Any:
    """`update_columns`' statement with its customer guarded, returning the row's customer."""
    statement = _update(keys, returning=False)
    guarded = customer_unless_held(
        _USERS, bindparam("user_id"), bindparam("stripe_customer_id", type_=Text())
    )
    return statement.values({"stripeCustomerId": guarded}).returning(_USERS.c.stripeCustomerId)


def _by_id() -> Select[Any]:
    return select(_USERS).where(_USERS.c.id == bindparam("id"))


_GET = HotStatement(_by_id)
_GET_LOCKED = HotStatement(lambda: _by_id().with_for_update())


@database_operation("findUserByEmail")
def get_by_email(conn: Conn, email: str) -> User | None:
    """Case-insensitive, served by the `lower(email)` unique index."""
    statement = select(User).where(func.lower(User.email) == func.lower(literal(email)))
    return conn.session.scalars(statement).one_or_none()


def _get_or_create_statement() -> Any:
    """Read the row if it exists, else insert it; one statement, one round trip. When another
    transaction is inserting the same id right now, the INSERT waits for it and does nothing, and
    this statement's snapshot cannot see the winner's row: it returns no row and is simply re-run.
    ON CONFLICT names no index, so an email another account holds (or is inserting) is no unique
    violation either (`_email_held_elsewhere` says why): no row, and the caller looks.
    A new user continues the trial tombstoned under its keys, if any (`_continuing_trial`); an
    id Clerk deleted is not inserted (no row either). The last column says whether the row was
    created. Bound parameters: `_new_user_params`."""
    existing = select(_USERS).where(_USERS.c.id == bindparam("p_id", type_=Text())).cte("existing")
    values = _new_user_columns()
    tombstone = _continuing_trial(values)
    absent = ~select(existing.c.id).exists()
    inserted = (
        _insert_from(_USERS, values, tombstone, absent, ~tombstone.c.deleted)
        .on_conflict_do_nothing()
        .returning(*_USERS.columns)
        .cte("inserted")
    )
    return select(existing, false()).union_all(select(inserted, true()))


_GET_OR_CREATE = HotStatement(_get_or_create_statement)


@database_operation("findOrCreateUser")
def get_or_create(conn: Conn, user_id: str, email: str, *, now: datetime | None = None) -> User:
    """The user with `user_id`, created (as a FREE trial) when missing. Race-safe.
    `AccountDeletedError` when Clerk deleted the id: no row is left for it.

    Runs outside a transaction (`db.run`): a lost race is resolved by re-running the statement.
    """
    params = _new_user_params(user_id, email, UserTier.FREE, now or utcnow())
    for _ in range(3):
        row = execute_hot(conn, _GET_OR_CREATE, params).fetchone()
        if row is not None:
            *columns, created = row
            if created:
                _refuse_if_deleted(conn, user_id)
            return _user_from(columns)
        # No row (rare): a race for the id (re-run: the row is visible now), the id deleted in
        # Clerk, or the email another account's.
        if tombstones.deleted_in_clerk(conn, user_id):
            raise AccountDeletedError(user_id)
        if _email_taken(conn, user_id, email):
            raise EmailInUseError()
    raise RuntimeError(f"user {user_id} neither found nor created after 3 attempts")


def _refuse_if_deleted(conn: Conn, user_id: str) -> None:
    """For a row its caller has just created (committed): if Clerk deleted the id meanwhile
    (the creating statement read the tombstones before the deletion committed, and the
    deletion, looking for a row after it, may have been too early to see this one), delete the
    row again, with what cascades from it, and raise `AccountDeletedError`."""
    removed = conn.session.execute(
        delete(User)
        .where(User.id == user_id, tombstones.clerk_deleted(user_id))
        .returning(User.id),
        execution_options={"synchronize_session": False},
    ).first()
    if removed is not None:
        raise AccountDeletedError(user_id)


@database_operation("updateUser")
def update_user(
    conn: Conn, user_id: str, *, now: datetime | None = None, **changes: Unpack[UserChanges]
) -> User:
    """Set only the given columns (and updatedAt); a missing user raises `UserNotFoundError`
    (whatever the change), an email another account holds `EmailInUseError` (checked by the
    UPDATE, as in `create`)."""
    params = {key: _db_value(value) for key, value in changes.items()}
    params["updated_at"] = db_time(now or utcnow())
    params["user_id"] = user_id
    try:
        keys = frozenset(changes) | {"updated_at"}
        row = execute_hot(conn, _update_statement(keys), params).fetchone()
    except IntegrityError as error:
        _raise_if_email_taken(error)
        raise
    if row is None:
        # A missing row is reported first, whoever holds the email: its caller may create the
        # user then (Clerk's user.updated), and that create refuses a taken email itself.
        email = changes.get("email")
        if (
            email is not None
            and get(conn, user_id) is not None
            and _email_taken(conn, user_id, email)
        ):
            raise EmailInUseError()
        raise UserNotFoundError(user_id)
    return _user_from(row)


_UPDATES: dict[tuple[frozenset[str], bool], HotStatement] = {}


def _update_statement(keys: frozenset[str], *, returning: bool = True) -> HotStatement:
    """`UPDATE users SET <keys> WHERE id [RETURNING *]`, compiled once per key set (binds named
    after the attributes, `user_id` for the id)."""
    statement = _UPDATES.get((keys, returning))
    if statement is None:
        statement = HotStatement(partial(_update, keys, returning=returning))
        _UPDATES[keys, returning] = statement
    return statement


def _update(keys: frozenset[str], *, returning: bool) -> Any:
    values: dict[str, Any] = {
        User.__mapper__.attrs[key].columns[0].name: bindparam(key) for key in sorted(keys)
    }
    statement = update(_USERS).where(_USERS.c.id == bindparam("user_id")).values(values)
    if "email" in keys:  # as `create` does (the index refuses only a racing write)
        held = _email_held_elsewhere(bindparam("user_id"), bindparam("email"))
        statement = statement.where(~held)
    return statement.returning(*_USERS.columns) if returning else statement


@database_operation("incrementKeywordSearches")
def increment_usage(
    conn: Conn,
    user_id: str,
    count: int,
    *,
    limit: int | None = None,
    now: datetime | None = None,
) -> Usage:
    """Add `count` to both counters in one statement, resetting the monthly one lazily.

    The monthly counter restarts at `count` when `monthlyResetAt` is before the current UTC
    month. With `limit`, the statement changes nothing and `QuotaExceededError` is raised when
    `used + count > limit`; Postgres re-checks the condition on the locked row, so concurrent
    increments can never pass the limit together.
    """
    if count < 0:
        raise ValueError("count must be >= 0")
    now = now or utcnow()
    params = {
        "id": user_id,
        "count": count,
        "month_start": db_time(month_start(now)),
        "now": db_time(now),
        "limit": limit,
    }
    statement = _INCREMENT if limit is None else _INCREMENT_LIMITED
    row = execute_hot(conn, statement, params).fetchone()
    if row is not None:
        reset_at = row[2].replace(tzinfo=UTC)
        return Usage(
            this_month=row[0], total=row[1], monthly_reset_at=reset_at, tier=UserTier(row[3])
        )
    stale = User.monthly_reset_at < month_start(now)
    # Failure path only: one more read to tell a missing user from a full quota.
    current = conn.session.execute(
        select(case((stale, 0), else_=User.keyword_searches_this_month)).where(User.id == user_id)
    ).scalar_one_or_none()
    if current is None:
        raise UserNotFoundError(user_id)
    raise QuotaExceededError(
        used=current, limit=limit or 0, requested=count, resets_at=next_month_start(now)
    )


def _increment_statement(*, limited: bool) -> Any:
    """`increment_usage`'s UPDATE (the CASE built once): binds id, count, month_start, now and,
    `limited`, limit."""
    count = bindparam("count", type_=Integer())
    now = bindparam("now", type_=UTCDateTime())
    stale = _USERS.c.monthlyResetAt < bindparam("month_start", type_=UTCDateTime())
    used = case((stale, 0), else_=_USERS.c.keywordSearchesThisMonth)
    statement = (
        update(_USERS)
        .where(_USERS.c.id == bindparam("id"))
        .values(
            {
                "keywordSearchesThisMonth": used + count,
                "keywordSearchesTotal": _USERS.c.keywordSearchesTotal + count,
                "monthlyResetAt": case((stale, now), else_=_USERS.c.monthlyResetAt),
                "updatedAt": now,
            }
        )
        .returning(
            _USERS.c.keywordSearchesThisMonth,
            _USERS.c.keywordSearchesTotal,
            _USERS.c.monthlyResetAt,
            _USERS.c.tier,
        )
    )
    if limited:
        statement = statement.where(used + count <= bindparam("limit", type_=Integer()))
    return statement


_INCREMENT = HotStatement(partial(_increment_statement, limited=False))
_INCREMENT_LIMITED = HotStatement(partial(_increment_statement, limited=True))


@database_operation("reserveKeywords")
def reserve_keywords(
    conn: Conn,
    user_id: str,
    email: str,
    count: int,
    *,
    limits: Limits,
    enforce: bool,
    now: datetime | None = None,
    hold: Hold | None = None,
) -> Usage:
    """Get-or-create the user and count `count` keywords against their quota: one statement,
    run again (RESERVE_RUNS in all) only when the row it saw changed under it: created by a
    racing first request, or erased.

    An `UPDATE … WHERE <quota allows it>` CTE for an existing row, and an `INSERT … ON CONFLICT
    DO NOTHING` CTE for an absent one, joined by UNION ALL: a new user is created (a FREE trial,
    continuing a tombstoned one of the same identity) with the keywords counted when they fit;
    an existing one is counted only when the tier's rule holds on the locked row (trial not
    over and `total + n <= trial limit`; else `this month (lazily reset) + n <= monthly
    limit`), so parallel requests never overshoot. The refusal path reads the row and asks
    `usage_view`, which mirrors that rule (pinned by a test): a refusal it says fits is a
    row the statement did not see (a racing first request's, or one erased since), and the
    statement runs again.
    With `enforce=False` (billing off) nothing is limited and usage is still counted.
    Refusals raise `TrialExpiredError` or `QuotaExceededError` and change nothing; an id Clerk
    deleted raises `AccountDeletedError`, leaving no row (`_refuse_if_deleted`); a new user
    whose email another account holds, `EmailInUseError` (checked as in `create`).
    With `hold`, the same statement writes the `keyword_reservations` row for what it counted
    (`shared.repositories.reservations`), so a function killed later cannot keep it.
    """
    now = now or utcnow()
    params = _new_user_params(user_id, email, UserTier.FREE, now)
    params.update(
        p_count=count,
        p_month_start=db_time(month_start(now)),
        p_trial_limit=limits.trial,
        p_pro_limit=limits.pro,
        p_enterprise_limit=limits.enterprise,
    )
    if hold is not None:
        params.update(p_hold_id=hold.id, p_hold_expires_at=db_time(hold.expires_at))
    upsert = _RESERVE[enforce, hold is not None]
    for _ in range(RESERVE_RUNS):
        row = execute_hot(conn, upsert, params).fetchone()
        if row is not None and row[4]:  # created: an erasure may have committed meanwhile
            _refuse_if_deleted(conn, user_id)
            settled = tombstones.settle(conn, user_id, email)
            ended = settled is not None and settled.trial_ends_at < now
            over = settled is not None and (settled.total > limits.trial or ended)
            if enforce and over and row[0]:  # counted on a trial that had already been used
                _uncount(conn, user_id, row[0], now)
                if hold is not None:  # its reservation goes too, without giving back twice
                    conn.session.execute(reservations.confirm_statement(hold.id, user_id))
                row = None
        if row is not None and not (row[4] and row[0] < count):  # a new user counted nothing
            reset_at = row[2].replace(tzinfo=UTC)
            return Usage(
                this_month=row[0], total=row[1], monthly_reset_at=reset_at, tier=UserTier(row[3])
            )
        # Refused (failure path only): one read to say why, with the numbers for the message.
        user = conn.session.get(User, user_id, populate_existing=True)
        if user is not None:
            view = usage_view(user, limits, now)
            if not enforce or (not view.trial_expired and view.used + count <= view.limit):
                continue  # not this row refused: the one the snapshot saw was erased since
            if view.trial_expired:
                raise TrialExpiredError()
            trial = user.tier is UserTier.FREE
            raise QuotaExceededError(
                used=view.used, limit=view.limit, requested=count, trial=trial,
                resets_at=view.resets_at,
            )  # fmt: skip
        if tombstones.deleted_in_clerk(conn, user_id):  # not created: `_reserve_statement`
            raise AccountDeletedError(user_id)
        if _email_taken(conn, user_id, email):  # not created either
            raise EmailInUseError()
        # Erased since the statement's snapshot (the row it saw is gone): run it again, its
        # snapshot now sees the tombstone, and the new row continues the trial.
    raise UserNotFoundError(user_id)  # erased again before each of the re-runs


# The reservation's runs: each erasure of the user landing between them (only the person's own
# can) costs one, and so does a racing first request that creates the row, at the start and
# again after each erasure. 5 count through two erasures, whatever first requests race them.
RESERVE_RUNS = 5


def _uncount(conn: Conn, user_id: str, count: int, now: datetime) -> None:
    """Take back what a user's creating statement just counted (same month, same transaction)."""
    conn.session.execute(
        update(User)
        .where(User.id == user_id)
        .values(
            keyword_searches_total=func.greatest(User.keyword_searches_total - count, 0),
            keyword_searches_this_month=func.greatest(User.keyword_searches_this_month - count, 0),
            updated_at=now,
        ),
        execution_options={"synchronize_session": False},
    )


def _reserve_statement(*, enforce: bool, with_hold: bool) -> Any:
    """`reserve_keywords`' statement, built and compiled once per shape; bound parameters:
    `_new_user_params`, p_count, p_month_start, the three limits and the hold's id and expiry."""
    now = bindparam("p_now", type_=UTCDateTime())
    count = bindparam("p_count", type_=Integer())
    trial_limit = bindparam("p_trial_limit", type_=Integer())
    stale = User.monthly_reset_at < bindparam("p_month_start", type_=UTCDateTime())
    monthly_used = case((stale, 0), else_=User.keyword_searches_this_month)
    monthly_limit = case(
        (User.tier == UserTier.PRO, bindparam("p_pro_limit", type_=Integer())),
        else_=bindparam("p_enterprise_limit", type_=Integer()),
    )
    allowed = case(
        (
            User.tier == UserTier.FREE,
            and_(trial_end_sql() >= now, User.keyword_searches_total + count <= trial_limit),
        ),
        else_=monthly_used + count <= monthly_limit,
    )
    values = _new_user_columns()
    tombstone = _continuing_trial(values)
    used_before = tombstone.c.used  # a tombstoned trial's usage, else 0
    fits_new_trial = and_(values["trial_ends_at"] >= now, used_before + count <= trial_limit)
    first = case((fits_new_trial, count), else_=0) if enforce else count
    values.update(keyword_searches_this_month=first, keyword_searches_total=used_before + first)
    counted = {
        User.keyword_searches_this_month: monthly_used + count,
        User.keyword_searches_total: User.keyword_searches_total + count,
        User.monthly_reset_at: case((stale, now), else_=User.monthly_reset_at),
        User.updated_at: now,
    }
    returned = (  # short labels: the union and the hold repeat them (psycopg's 4,096 above)
        User.keyword_searches_this_month.label("month"),
        User.keyword_searches_total.label("total"),
        User.monthly_reset_at.label("reset"),
        User.tier,
    )
    # A row this statement's snapshot sees is only ever updated: if an erasure deletes it
    # meanwhile (the UPDATE waited on its lock), nothing is counted and the caller runs the
    # statement again, whose snapshot then sees the tombstone. An INSERT … ON CONFLICT would
    # insert, once the erasure commits, a fresh trial computed before it, visible to all.
    updated = (
        update(User)
        .where(User.id == values["id"], *([allowed] if enforce else []))
        .values(counted)
        .returning(*returned, false().label("inserted"))
        .cte("updated")
    )
    # Inserted only where the snapshot sees no row; nothing proposed for an id Clerk deleted
    # (its row is gone, and stays gone), nor for an email another account holds (`create`'s
    # check). A racing first request's row is counted ON CONFLICT, as an existing one.
    # A racing first request's row, or a racing insert of the email, makes this one insert
    # nothing (DO NOTHING waits for it to commit): the caller's refusal path reads the row and
    # runs the statement again, whose UPDATE then counts on it.
    absent = ~exists().where(_USERS.c.id == values["id"])
    free = ~_email_held_elsewhere(values["id"], values["email"])
    statement = _insert_from(User, values, tombstone, ~tombstone.c.deleted, absent, free)
    inserted = (
        statement.on_conflict_do_nothing()
        .returning(*returned, true().label("inserted"))
        .cte("inserted")
    )
    upsert = select(updated).union_all(select(inserted))
    return _with_hold(upsert.cte("reserved"), enforce=enforce) if with_hold else upsert


def _with_hold(reserved: Any, *, enforce: bool) -> Any:
    """The reservation's rows (`reserved`, a CTE), plus the reservation row for the row it
    counted (none if refused, nor for a new user whose first request did not fit the trial),
    selecting the same columns."""
    # A new user's row counted its first request only when it holds all of it (else 0).
    counted_if_new = (
        reserved.c.month >= bindparam("p_count", type_=Integer()) if enforce else true()
    )
    source = select(
        bindparam("p_hold_id", type_=Text()),
        bindparam("p_id", type_=Text()),
        bindparam("p_count", type_=Integer()),
        bindparam("p_now", type_=UTCDateTime()),
        bindparam("p_hold_expires_at", type_=UTCDateTime()),
    ).select_from(reserved)
    source = source.where(or_(~reserved.c.inserted, counted_if_new))
    reservation = (
        insert(KeywordReservation)
        .from_select(
            [
                KeywordReservation.id,
                KeywordReservation.user_id,
                KeywordReservation.keywords,
                KeywordReservation.reserved_at,
                KeywordReservation.expires_at,
            ],
            source,
        )
        .cte("reservation")
    )
    return select(*reserved.c).add_cte(reservation)


_RESERVE = {
    (enforce, with_hold): HotStatement(
        partial(_reserve_statement, enforce=enforce, with_hold=with_hold)
    )
    for enforce in (True, False)
    for with_hold in (True, False)
}


@database_operation("resetMonthlyUsage")
def reset_monthly_usage(conn: Conn, user_id: str, *, now: datetime | None = None) -> None:
    """Zero the monthly counter and stamp the reset (one statement, so it cannot race)."""
    now = db_time(now or utcnow())
    if execute_hot(conn, _RESET, {"id": user_id, "now": now}).fetchone() is None:
        raise UserNotFoundError(user_id)


_RESET = HotStatement(
    lambda: (
        update(_USERS)
        .where(_USERS.c.id == bindparam("id"))
        .values(
            {
                "keywordSearchesThisMonth": 0,
                "monthlyResetAt": bindparam("now", type_=UTCDateTime()),
                "updatedAt": bindparam("now", type_=UTCDateTime()),
            }
        )
        .returning(_USERS.c.id)
    )
)


@database_operation("deleteUser")
def delete_user(conn: Conn, user_id: str) -> bool:
    """Delete the user: saved searches cascade, history rows keep userId NULL. False if absent."""
    result = conn.session.execute(
        delete(User).where(User.id == user_id).returning(User.id),
        execution_options={"synchronize_session": False},
    )
    return result.first() is not None


@database_operation("findExpiredTrials")
def find_expired_trials(
    conn: Conn, *, now: datetime | None = None, after_id: str | None = None, limit: int = 500
) -> list[User]:
    """FREE users whose trial has ended, in id order (keyset batches for the cron)."""
    statement = (
        select(User)
        .where(User.tier == UserTier.FREE, trial_over(now or utcnow()))
        .order_by(User.id)
        .limit(limit)
    )
    if after_id is not None:
        statement = statement.where(User.id > after_id)
    return list(conn.session.scalars(statement))


@database_operation("getSubscriptionMetrics")
def subscription_metrics(conn: Conn) -> SubscriptionMetrics:
    """All five counts in one scan (the original ran five COUNT queries)."""
    row = conn.session.execute(
        select(
            func.count(),
            func.count().filter(User.tier == UserTier.FREE),
            func.count().filter(User.tier == UserTier.PRO),
            func.count().filter(User.tier == UserTier.ENTERPRISE),
            func.count().filter(User.subscription_status == "active"),
        )
    ).one()
    return SubscriptionMetrics(*row)


@dataclass(frozen=True, slots=True)
class ResetBatch:
    """One batch of the monthly reset: the keyset position reached and the rows reset."""

    last_id: str | None  # None: no stale user after the cursor (the reset is done)
    reset: int


@database_operation("resetStaleMonthlyUsage")
def reset_stale_monthly_usage(
    conn: Conn, *, after_id: str | None, limit: int, now: datetime
) -> ResetBatch:
    """Zero the monthly counter of up to `limit` users after `after_id` (id order) whose
    `monthlyResetAt` is before `now`'s UTC month, stamping `monthlyResetAt = now`. ONE statement.

    The same rule as the lazy reset in `increment_usage`/`reserve_keywords`, re-checked by the
    UPDATE on each locked row: a user whose counter a concurrent request has already reset (and
    counted into) is skipped, so no increment is lost and nobody is reset twice in a month.
    """
    start = month_start(now)
    batch = (
        select(User.id)
        .where(User.id > (after_id or ""), User.monthly_reset_at < start)
        .order_by(User.id)
        .limit(limit)
        .cte("batch")
    )
    reset = (
        update(User)
        .where(User.id.in_(select(batch.c.id)), User.monthly_reset_at < start)
        .values(keyword_searches_this_month=0, monthly_reset_at=now, updated_at=now)
        .returning(User.id)
        .cte("reset")
    )
    statement = select(
        select(func.max(batch.c.id)).scalar_subquery(),
        select(func.count()).select_from(reset).scalar_subquery(),
    )
    last_id, count = conn.session.execute(statement).one()
    return ResetBatch(last_id=last_id, reset=int(count))


@dataclass(frozen=True, slots=True)
class ExpiredTrials:
    total: int  # FREE users whose trial has ended
    since: int  # … of which ended in [since, now)


@database_operation("countExpiredTrials")
def count_expired_trials(conn: Conn, *, now: datetime, since: datetime) -> ExpiredTrials:
    """Both counts in one scan of the `(tier, trialEndsAt)` index."""
    ended = and_(User.tier == UserTier.FREE, trial_over(now))
    row = conn.session.execute(
        select(func.count(), func.count().filter(trial_end_sql() >= since)).where(ended)
    ).one()
    return ExpiredTrials(total=int(row[0]), since=int(row[1]))
