"""System metrics: database size, connections, row estimates, searches, cache hits, Redis.

Schedule (UTC): `*/5 * * * *`. The job's logic and guarantees: `shared.cron.metrics`.
"""

from shared.cron.entry import asgi_app, make_lambda_handler
from shared.cron.metrics import JOB

SCHEDULE = "*/5 * * * *"

lambda_handler = make_lambda_handler(JOB)
app = asgi_app(JOB)
