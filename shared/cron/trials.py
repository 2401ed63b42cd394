"""Trial expiry (hourly): counts and logs the FREE users whose 7-day trial ended. Changes nothing.

Why no write: expiry is already enforced and shown from `trialEndsAt` at read time
(`reserve_keywords` refuses, `usage_view` reports `trialExpired`), and billing's tier mapping
(`shared.billing`, docs/billing.md) has no "trial expired" state: `subscriptionStatus` holds
the Stripe subscription's status (`active`, `canceled`, …), which `GET /api/me` returns as
`subscription.status`, billing's ordering rules compare against, and the legacy Redis mirror
accepts only as active/canceled/past_due/unpaid. Writing `trial_expired` there would invent a
subscription the user never had and break those readers. An expired trial stays FREE.

So the job is the marker: each run reports how many trials ended since the previous run
(`expiredSinceLastRun`, the hook for a future "your trial ended" email) and in total.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from shared import db
from shared.cron.runner import Job, Run
from shared.repositories import users

FIRST_WINDOW = timedelta(hours=1)  # the schedule's period: what a first run looks back over


def expire_trials(run: Run) -> None:
    if not run.has_time():
        return
    checked = run.state.get("checkedUntil")
    since = datetime.fromisoformat(checked) if checked else run.now - FIRST_WINDOW
    since = min(since, run.now)
    with run.batch():
        counts = db.read(lambda conn: users.count_expired_trials(conn, now=run.now, since=since))
    run.processed = counts.since
    run.extra.update(expiredSinceLastRun=counts.since, expiredTrials=counts.total, rowsChanged=0)
    run.state["checkedUntil"] = run.now.isoformat()


JOB = Job("expire_trials", expire_trials)
