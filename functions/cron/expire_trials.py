"""Trial expiry marker: count and log the FREE trials that ended since the last run (no writes).

Schedule (UTC): `10 * * * *`. The job's logic and guarantees: `shared.cron.trials`.
"""

from shared.cron.entry import asgi_app, make_lambda_handler
from shared.cron.trials import JOB

SCHEDULE = "10 * * * *"

lambda_handler = make_lambda_handler(JOB)
app = asgi_app(JOB)
