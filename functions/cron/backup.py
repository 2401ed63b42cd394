"""Logical backup: every table, one snapshot, gzip to S3; the newest BACKUP_KEEP are kept.

Schedule (UTC): `0 2 * * *`. The job's logic, the format and restore: `shared.cron.backup`.
CLI: `python -m functions.cron.backup {run,list,restore s3://bucket/<prefix><name>/}`.
"""

from shared.cron.backup import JOB, main
from shared.cron.entry import asgi_app, make_lambda_handler

SCHEDULE = "0 2 * * *"

lambda_handler = make_lambda_handler(JOB)
app = asgi_app(JOB)

if __name__ == "__main__":
    raise SystemExit(main())
