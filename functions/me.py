"""GET, DELETE /api/me: the caller's profile and usage, and erasure of everything about them.

Erasure (GDPR) removes or anonymises the caller's rows in every table in one transaction (see
`shared.repositories.personal_data`); the Clerk `user.deleted` webhook runs the same code.
"""

from __future__ import annotations

from dataclasses import replace

from fastapi import Request
from starlette.responses import Response

from shared import accounts, auth, db
from shared.clock import utcnow
from shared.config import get_settings
from shared.contracts import account
from shared.errors import EmailInUseError, SubscriptionLiveError
from shared.http.app import create_app, make_lambda_handler
from shared.http.auth import CurrentUser, SignedIn
from shared.http.errors import ApiError
from shared.http.invocation import storage_deadline
from shared.http.openapi import body
from shared.http.responses import ok
from shared.repositories import users
from shared.repositories.users import placeholder_email

app = create_app(title="Me", summary="The caller's profile and usage; erase their data.")

SUBSCRIPTION_LIVE = "Cancel your subscription before deleting your account."


@app.get(
    "/api/me",
    response_model=None,
    responses={200: body("The caller's profile and usage", "Profile")},
)
def get_me(user: CurrentUser) -> Response:
    """Profile, subscription and keyword usage (the lazy monthly reset applied on read).

    Get-or-create rather than get: another container may have erased the row since this one
    provisioned the caller, and the answer is then a fresh account, never a 500.
    """
    row = db.run(lambda conn: users.get_or_create(conn, user.user_id, user.email), idempotent=True)
    return ok(account.profile(row, get_settings(), utcnow()))


@app.delete(
    "/api/me",
    response_model=None,
    responses={
        200: body("Erased", "Deleted"),
        409: {"description": "A Stripe subscription is live: cancel it first"},
    },
)
def delete_me(request: Request, user: SignedIn) -> Response:
    """Erase the caller: user row (saved searches cascade), API usage, history links, flags.

    A paying user is refused (409) while the Stripe subscription is live, so erasure never
    leaves a subscription billing an account that no longer exists. A caller whose email
    another account holds (every other route answers them 409) is provisioned with the
    placeholder, as a session without an email would be, and erased: their erasure must not
    depend on someone else's account, and the answer tells them nothing about it.
    """
    try:
        auth.provision(user)
    except EmailInUseError:
        auth.provision(replace(user, email=placeholder_email(user.user_id)))
    try:
        erasure = db.transaction(
            lambda conn: accounts.erase(conn, user.user_id, refuse_live_subscription=True)
        )
    except SubscriptionLiveError:
        raise ApiError(409, SUBSCRIPTION_LIVE) from None
    accounts.finish_erasure(
        user.user_id, erasure, source="api", storage_deadline=storage_deadline(request)
    )
    request.state.user_id = None  # this request's own usage row must not re-link the erased user
    return ok({"deleted": True})


lambda_handler = make_lambda_handler(app)
