"""Search rollup: daily aggregates of search history per provider, recomputed incrementally.

Schedule (UTC): `20 * * * *`. The job's logic and guarantees: `shared.cron.rollup`.
"""

from shared.cron.entry import asgi_app, make_lambda_handler
from shared.cron.rollup import JOB

SCHEDULE = "20 * * * *"

lambda_handler = make_lambda_handler(JOB)
app = asgi_app(JOB)
