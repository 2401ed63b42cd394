"""Every table of the schema: what Alembic compares the database with.

A function imports only the table modules its repositories use (each costs its import and its
mapper's configuration on a cold start), so `Base.metadata` holds just those tables there.
Whatever needs the whole schema imports this module and reads `metadata`.
"""

import importlib

from shared.models import Base

TABLE_MODULES = (
    "api_usage",
    "cron_leases",
    "data_exports",
    "erased_billing_customers",
    "feature_flags",
    "legacy",
    "organizations",
    "reservations",
    "saved_searches",
    "search_history",
    "search_rollups",
    "system_metrics",
    "tombstones",
    "users",
    "webhook_events",
)
for _name in TABLE_MODULES:
    importlib.import_module(f"shared.models.{_name}")
metadata = Base.metadata
