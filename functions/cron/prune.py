"""Retention: delete history, API usage, processed webhook events and metrics past their age.

Schedule (UTC): `30 3 * * *`. The job's logic and guarantees: `shared.cron.prune`.
"""

from shared.cron.entry import asgi_app, make_lambda_handler
from shared.cron.prune import JOB

SCHEDULE = "30 3 * * *"

lambda_handler = make_lambda_handler(JOB)
app = asgi_app(JOB)
