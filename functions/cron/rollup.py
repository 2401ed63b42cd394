"""Search rollup: daily aggregates of search history per provider, recomputed incrementally.

Schedule (UTC): `20 * * * *`. The job's logic and guarantees: `shared.cron.rollup`.
"""

from shared.cron.entry import asgi_app, lambda_handler
from shared.cron.rollup import JOB

SCHEDULE = "20 * * * *"

handler = lambda_handler(JOB)
app = asgi_app(JOB)
