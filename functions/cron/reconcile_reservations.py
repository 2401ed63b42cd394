"""Reservation reconciliation: give back the keywords of searches killed before they finished.

Schedule (UTC): `*/5 * * * *`. The job's logic and guarantees: `shared.cron.reservations`.
"""

from shared.cron.entry import asgi_app, make_lambda_handler
from shared.cron.reservations import JOB

SCHEDULE = "*/5 * * * *"

lambda_handler = make_lambda_handler(JOB)
app = asgi_app(JOB)
