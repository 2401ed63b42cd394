"""Schemathesis against every HTTP function's own OpenAPI document (issue 10, bad input).

Each module in functions/ (not functions/cron/) is loaded from its FastAPI `app.openapi()` and
called in-process through schemathesis' ASGI transport: the function sees what it sees deployed
(only its own routes, its own guards). Every operation runs schemathesis' three phases: the
schema's examples, the coverage phase (boundary values, and deliberately invalid ones: missing
required fields, wrong types, undeclared methods and media types) and Hypothesis fuzzing in both
generation modes (valid and invalid data). The requests carry a real session token signed with
the test key, an admin's for admin routes, against the real test database (direct lane).

Every response must pass: no 5xx, a documented status code, a documented content type, a body
that matches the documented schema (the error envelope for every error status), documented
headers, invalid data refused, and 405 with `Allow` for methods a path does not offer.

The Vercel cron entry (`shared.cron.entry.asgi_app`) is a bare ASGI callable without an OpenAPI
document, so it is not fuzzed here; tests/http/test_bad_input.py covers it.

Generation is deterministic (Hypothesis' `derandomize`, no example database), so CI runs the
same cases every time; no Hypothesis health check is suppressed. The number of cases per
operation (and how they were answered) is printed when the module finishes (run with `-n 0` to
see it; xdist workers do not print).
"""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.routing import APIRoute
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from devkit import layout
from devkit.postgres import truncate_tables
from devkit.upstash_emulator import UpstashEmulator
from shared.http.auth import require_admin
from shared.http.openapi import dependency_calls
from tests.support import fake_stripe
from tests.support.http import Keys, app_environment, make_token
from tests.support.s3 import mock_s3

# Fuzzing examples per operation, on top of the examples and coverage cases. Parameterless
# operations (GET /api/me) run out of distinct inputs long before this.
MAX_EXAMPLES = 200
CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {
            "mode": "all",  # positive and negative
            "max-examples": MAX_EXAMPLES,
            "deterministic": True,
            "database": "none",
        },
    }
)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
    unsupported_method,
]
USER = "user_fuzz"
ADMIN = "user_fuzz_admin"
CLERK_SECRET = "whsec_ZnV6emluZy1rZXlmbGFzaC1jbGVyay13ZWJob29rcw=="
STRIPE_SECRET = "whsec_fuzzing_keyflash_stripe"

# (function, operation label) -> cases run; per phase; per status class (2xx, 4xx, ...)
CASES: Counter[tuple[str, str]] = Counter()
PHASES: Counter[tuple[str, str, str]] = Counter()
STATUSES: Counter[tuple[str, str, str]] = Counter()


@dataclass(frozen=True)
class Sessions:
    """Authorization headers for the two identities the fuzzer uses."""

    user: dict[str, str]
    admin: dict[str, str]


@pytest.fixture(scope="module")
def sessions(
    request: pytest.FixtureRequest,
    direct_database_url: str,
    rsa_keys: Keys,
    upstash: UpstashEmulator,
) -> Iterator[Sessions]:
    """The app on the direct lane, like `api_env`, for the whole module (the fuzz cases of one
    operation share it; a per-test fixture would be rebuilt for every case).

    Billing is on and both webhook secrets are set, so the webhooks refuse unsigned input with
    400 instead of answering 503/500 for a missing configuration; checkout and the billing
    portal reach a local fake of the Stripe API; the trial allowance is unlimited so
    POST /api/keywords keeps reaching the provider rather than answering 429.
    """
    from shared import auth, config, db, redis

    env = {
        "DATABASE_URL": direct_database_url,
        "DIRECT_DATABASE_URL": direct_database_url,
        **app_environment(rsa_keys, upstash.url, upstash.token),
        "ADMIN_USER_IDS": ADMIN,
        "BILLING_ENABLED": "true",
        "TRIAL_KEYWORD_LIMIT": "1000000000",
        "STRIPE_WEBHOOK_SECRET": STRIPE_SECRET,
        "CLERK_WEBHOOK_SECRET": CLERK_SECRET,
    }
    with (
        pytest.MonkeyPatch.context() as patch,
        mock_s3(patch),  # exports are stored in S3
        fake_stripe.serve() as stripe_api,
    ):
        env |= {
            "STRIPE_SECRET_KEY": fake_stripe.API_KEY,
            "STRIPE_PRICE_PRO": fake_stripe.PRICE,
            "STRIPE_API_BASE": stripe_api.url,
        }
        for name, value in env.items():
            patch.setenv(name, value)
        config.get_settings.cache_clear()
        db.dispose_engine()
        auth._provisioned.clear()
        redis.reset_redis()
        # One token per identity, for the whole module.
        yield Sessions(
            user={"Authorization": f"Bearer {make_token(rsa_keys, USER, ttl=3600)}"},
            admin={"Authorization": f"Bearer {make_token(rsa_keys, ADMIN, ttl=3600)}"},
        )
        db.dispose_engine()
        auth._provisioned.clear()
        redis.reset_redis()
    config.get_settings.cache_clear()
    truncate_tables(direct_database_url)
    report_cases(request.config)


def report_cases(config: pytest.Config) -> None:
    """Print the cases run per operation (so the report can cite them)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None or not CASES:
        return
    lines = ["", "schemathesis cases per operation (examples/coverage/fuzzing; answers):"]
    for (function, label), total in sorted(CASES.items()):
        phases = "/".join(
            str(PHASES[(function, label, phase)]) for phase in ("examples", "coverage", "fuzzing")
        )
        answers = " ".join(
            f"{kind}:{STATUSES[(function, label, kind)]}"
            for kind in ("2xx", "3xx", "4xx", "5xx")
            if STATUSES[(function, label, kind)]
        )
        lines.append(f"  {total:5d}  {label}  [{function}]  ({phases}; {answers})")
    lines.append(f"  {sum(CASES.values()):5d}  in all, {len(CASES)} operations")
    with capture.global_and_fixture_disabled():  # teardown output is captured otherwise
        for line in lines:
            reporter.write_line(line)


def admin_only(app: FastAPI) -> bool:
    """Whether the function's routes need an admin (they depend on `require_admin`)."""
    return any(
        require_admin in set(dependency_calls(route.dependant))
        for route in app.routes
        if isinstance(route, APIRoute)
    )


@pytest.mark.parametrize("function", layout.http_functions())
def test_documents_declare_the_envelope_for_errors(function: str) -> None:
    """What the checks below rely on: no FastAPI 422 (we answer 400), and every error status an
    operation declares has a body schema (the envelope unless the route documents its own)."""
    app: FastAPI = importlib.import_module(f"{layout.FUNCTIONS_PACKAGE}.{function}").app
    for path, operations in app.openapi()["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "422" not in responses, f"{method} {path}"
            assert {"400", "500", "503"} <= responses.keys(), f"{method} {path}"
            for status, response in responses.items():
                if status[0] in "45":
                    assert response["content"]["application/json"]["schema"], (method, path, status)


def fuzz_test(function: str) -> Callable[..., None]:
    """One pytest test per operation of `functions/<function>.py`, from its own document."""
    app: FastAPI = importlib.import_module(f"{layout.FUNCTIONS_PACKAGE}.{function}").app
    schema = schemathesis.openapi.from_dict(app.openapi(), config=CONFIG)
    schema.app = app  # requests go to the app in-process (ASGI transport)
    as_admin = admin_only(app)

    @schema.parametrize()
    def test(case: schemathesis.Case, sessions: Sessions) -> None:
        label = case.operation.label
        CASES[(function, label)] += 1
        meta = case.meta
        if meta is not None:
            PHASES[(function, label, str(meta.phase.name))] += 1
        headers = sessions.admin if as_admin else sessions.user
        response = case.call_and_validate(headers=headers, checks=CHECKS)
        # Every case carries a valid session: a 401 would mean the fuzzer only met the door.
        assert response.status_code != 401, "the fuzzer's session token was refused"
        STATUSES[(function, label, f"{response.status_code // 100}xx")] += 1

    test.__name__ = f"test_{function}"
    test.__doc__ = f"functions/{function}.py: every operation, every check, no failure."
    return test


# One test per function, its operations as parameters: a new module in functions/ is fuzzed
# without being listed here. (Built eagerly at import: schemathesis' lazy `from_fixture` relies on
# a pytest internal, `Item._nodeid`, that pytest 9 removed.)
for _function in layout.http_functions():
    globals()[f"test_{_function}"] = fuzz_test(_function)
