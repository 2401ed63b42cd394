"""Scheduled jobs: the logic behind `functions/cron/<job>.py`, which only wires it to a platform.

Every job runs through `shared.cron.runner.run_job`, which gives it the same guarantees:
- one run at a time (a lease row in `cron_leases`, safe through the transaction pooler);
- short batches, each its own statement or transaction, so no lock is held for long;
- a time budget: it stops `CRON_TIME_MARGIN_MS` before the platform's limit and the next run
  resumes (every job is idempotent, so a run that fires twice or repeats a batch is harmless);
- a JSON summary `{job, processed, batches, durationMs, complete, …}`, logged and returned.

`shared.cron.entry` adapts a job to Lambda (`lambda_handler(event, context)` for EventBridge
schedule events) and to Vercel (`app`, a framework-free ASGI GET guarded by `Bearer $CRON_SECRET`).
Nothing here imports FastAPI, Starlette or Mangum: a cron's cold start pays for none of them.
"""
