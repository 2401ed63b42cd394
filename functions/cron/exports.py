"""Data exports: build the exports users asked for, gzip to S3; expire and sweep old ones.

Schedule (UTC): `*/5 * * * *`. The job's logic: `shared.cron.exports`; the document and the
storage layout: `shared.exports`.
"""

from shared.cron.entry import asgi_app, make_lambda_handler
from shared.cron.exports import JOB

SCHEDULE = "*/5 * * * *"

lambda_handler = make_lambda_handler(JOB)
app = asgi_app(JOB)
