"""Every method of a path is the function's to answer: HEAD, OPTIONS's and 405's `Allow`.

Deployed, every method of a path reaches its function (serverless.yml declares each path with
`method: '*'`, vercel.json's routes filter no methods), so the answers are the same on Lambda,
Vercel and `keyflash dev`:

- a method a route serves: that route;
- HEAD: the GET it stands for without the body (`Head`, RFC 9110 §9.3.2, as the original's
  Next.js route handlers answered it), a 405 where no GET is served;
- OPTIONS: 200 `{}` with `Allow` (`shared.http.guards.Csrf`, which also answers preflights);
- any other: the 405 envelope with `Allow` and `supportedMethods` (`method_not_allowed`).

`supportedMethods` lists the methods the path's routes serve, the list the original's body had
(`["POST"]` on the keyword routes); `Allow` adds HEAD where GET is one and OPTIONS, which every
path answers (RFC 9110 §10.2.1).
"""

from __future__ import annotations

from collections.abc import Iterable

from fastapi.routing import APIRoute
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.http.errors import ApiError


def path_routes(scope: Scope) -> list[APIRoute]:
    """The app's routes whose path matches the request's, whatever their methods."""
    return [
        route
        for route in scope["app"].router.routes
        if isinstance(route, APIRoute) and route.matches(scope)[0] is not Match.NONE
    ]


def served(scope: Scope) -> list[str]:
    """The methods the app's routes serve on the request's path, sorted (Starlette's 405 names
    only the first route's). A hidden route (`include_in_schema=False`, `GET /api/keywords`)
    exists only to answer its own 405, so it serves nothing."""
    methods: set[str] = set()
    for route in path_routes(scope):
        if route.include_in_schema:
            methods |= route.methods or set()
    return sorted(methods)


def allow(methods: Iterable[str]) -> str:
    """`Allow` for a path whose routes serve `methods`: those, HEAD where GET is one, OPTIONS."""
    listed = {*methods, "OPTIONS"}
    if "GET" in listed:
        listed.add("HEAD")
    return ", ".join(sorted(listed))


def method_not_allowed(methods: list[str], message: str | None = None) -> ApiError:
    """The 405 envelope for a path whose routes serve `methods`; `message` the route's own
    (the original's `Use POST to search for keywords`), else one naming the methods."""
    default = f"Use {' or '.join(methods)} for this endpoint" if methods else "Method not allowed"
    return ApiError(
        405,
        message or default,
        label="Method Not Allowed",
        headers={"Allow": allow(methods)},
        extra={"supportedMethods": methods},
    )


class Head:
    """HEAD runs as the GET it stands for; only the body is dropped.

    Outermost (`shared.http.app.create_app`), so everything inside sees, checks and counts a GET:
    the session and admin checks, the rate limits, the `api_usage` row (method GET), the CSRF
    cookie, and a 405 where no GET is served; every answer, refusals and the last-resort 500
    included, loses its body and keeps its headers (Content-Length is GET's). The app gets a copy
    of the scope: the server's keeps HEAD, so it sends no body either."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, without_body)
