"""The shape of a Clerk organization id, in a module of its own so that what checks it (session
tokens, the Clerk and Stripe webhooks, the org routes) pays for no more than a regex: the Stripe
webhook and its retry cron never load the token verifier (`jwt`) for it.
"""

from __future__ import annotations

import re

ORG_ID = re.compile(r"org_[A-Za-z0-9]{1,64}")


def is_org_id(value: object) -> bool:
    """Whether `value` is shaped like a Clerk organization id (`org_` + letters and digits)."""
    return isinstance(value, str) and ORG_ID.fullmatch(value) is not None
