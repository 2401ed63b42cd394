"""GET /api/flags: every feature flag's value for the caller, `{flags: {key: bool}}`.

Served from the container's flag snapshot (`shared.flags`: one query per FLAGS_CACHE_SECONDS),
and the caller is identified from the session token alone, so a warm call costs no flag query
and no user lookup. Without a valid token the caller is anonymous: a flag is then on only when
it is enabled at 100 %.
"""

from __future__ import annotations

from fastapi import Request
from starlette.responses import Response

from shared import flags
from shared.http.app import create_app, make_lambda_handler
from shared.http.auth import identify
from shared.http.openapi import body
from shared.http.responses import ok

app = create_app(title="Feature flags", summary="The caller's feature flags.")


@app.get(
    "/api/flags",
    response_model=None,
    responses={200: body("Every flag's value for the caller", "FlagValues")},
)
def get_flags(request: Request) -> Response:
    identity = identify(request)
    return ok({"flags": flags.flags_for(identity.user_id if identity else None)})


lambda_handler = make_lambda_handler(app)
