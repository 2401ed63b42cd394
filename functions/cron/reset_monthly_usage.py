"""Monthly usage reset: zero every stale monthly keyword counter, on the 1st of the month.

Schedule (UTC): `5 0 1 * *`. The job's logic and guarantees: `shared.cron.reset_usage`.
"""

from shared.cron.entry import asgi_app, make_lambda_handler
from shared.cron.reset_usage import JOB

SCHEDULE = "5 0 1 * *"

lambda_handler = make_lambda_handler(JOB)
app = asgi_app(JOB)
