"""Webhook retries (every 15 min): apply Stripe events that failed, through the webhook's path.

Each due event (unprocessed, attempted fewer than WEBHOOK_RETRY_MAX_ATTEMPTS times, its backoff
WEBHOOK_RETRY_BASE_DELAY_S * 2^(attempts-1) over) goes through `shared.billing.process_recorded`,
the same claim-apply-mark transaction the Stripe webhook uses: a delivery of the same event
arriving meanwhile waits on the claimed row and then sees it processed, so an event is
applied once whoever gets there first. A failure is recorded by billing (attempts + 1, new
backoff), so a run never retries one event twice. With BILLING_ENABLED=false nothing is
applied, as the webhook itself refuses events then.

Events that exhausted their attempts stay unprocessed in the ledger (prune keeps them) for a
human to look at; `webhook_events.error` says why they failed.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import timedelta

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
    seen: set[str] = set()
    while run.has_time():
        with run.batch():
            due = db.read(
                lambda conn: webhook_events.list_retryable(
                    conn,
                    max_attempts=settings.webhook_retry_max_attempts,
                    base_delay=delay,
                    now=run.now,
                    limit=size,
                )
            )
            fresh = [event for event in due if event.id not in seen]
            for event in fresh:
                if not run.has_time():
                    break
                seen.add(event.id)
                outcomes[_retry(event.id, event.provider, run)] += 1
        if len(fresh) < size or not run.complete:
            break
    run.processed = sum(outcomes.values())
    run.extra["outcomes"] = dict(sorted(outcomes.items()))


def _retry(event_id: str, provider: str, run: Run) -> str:
    """One event through billing; the outcome's name, or `failed` (billing recorded why)."""
    if provider != billing.PROVIDER:
        return "skipped"  # only Stripe events are retried; others never stay unprocessed
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
