"""Webhook retries (every 15 min): apply Stripe events that failed, through the webhook's path.

Each due event (an unprocessed Stripe event, attempted fewer than WEBHOOK_RETRY_MAX_ATTEMPTS
times, its backoff WEBHOOK_RETRY_BASE_DELAY_S * 2^(attempts-1) over) goes through
`shared.billing.process_recorded`, the same claim-apply-mark transaction the Stripe webhook uses:
a delivery of the same event arriving meanwhile waits on the claimed row and then sees it
processed, so an event is applied once whoever gets there first. Every failure is recorded by
billing (attempts + 1, new backoff), including an event that cannot be run again (no stored
payload, or a malformed one), so it backs off and stops at the limit like any other. A run
pages through the due events oldest first by (createdAt, id), trying each once: events that
fail again never hide the ones behind them, and `complete` means every due event was tried.
With BILLING_ENABLED=false nothing is applied, as the webhook itself refuses events then.

Events that exhausted their attempts stay unprocessed in the ledger (prune keeps them) for a
human to look at; `webhook_events.error` says why they failed.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime, timedelta
from functools import partial

from shared import billing, db
from shared.cron.runner import Job, Run
from shared.repositories import webhook_events
from shared.telemetry import log_event

MAX_BATCH = 100  # each event is its own transaction; a batch is just what one query lists


def retry_webhooks(run: Run) -> None:
    settings = run.settings
    if not settings.billing_enabled:
        run.extra["skipped"] = "billing disabled"
        return
    size = min(settings.cron_batch_size, MAX_BATCH)
    delay = timedelta(seconds=settings.webhook_retry_base_delay_s)
    outcomes: Counter[str] = Counter()
    after: tuple[datetime, str] | None = None
    while run.has_time():
        with run.batch():
            due = db.read(
                partial(
                    webhook_events.list_retryable,
                    max_attempts=settings.webhook_retry_max_attempts,
                    base_delay=delay,
                    now=run.now,
                    after=after,
                    limit=size,
                )
            )
            for event in due:
                if not run.has_time():
                    break
                outcomes[_retry(event.id, run)] += 1
                after = (event.created_at, event.id)
        if len(due) < size or not run.complete:
            break
    run.processed = sum(outcomes.values())
    run.extra["outcomes"] = dict(sorted(outcomes.items()))


def _retry(event_id: str, run: Run) -> str:
    """One event through billing; the outcome's name, or `failed` (billing recorded why)."""
    try:
        return billing.process_recorded(event_id, now=run.now).value
    except Exception as error:
        log_event(
            "webhook_retry_failed",
            level=logging.WARNING,
            eventId=event_id,
            reason=billing.describe_failure(error),
        )
        return "failed"


JOB = Job("retry_webhooks", retry_webhooks)
