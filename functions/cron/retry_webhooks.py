"""Webhook retries: apply Stripe events that failed, with backoff, through the webhook's path.

Schedule (UTC): `*/15 * * * *`. The job's logic and guarantees: `shared.cron.webhook_retry`.
"""

from shared.cron.entry import asgi_app, make_lambda_handler
from shared.cron.webhook_retry import JOB

SCHEDULE = "*/15 * * * *"

lambda_handler = make_lambda_handler(JOB)
app = asgi_app(JOB)
