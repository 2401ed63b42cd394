"""Stripe customers of erased users, by hash."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from shared.models import Base, UTCDateTime


class ErasedBillingCustomer(Base):
    """Addition: the SHA-256 of an erased user's Stripe customer id, so that customer's later
    Stripe events are recognised (and recorded without payload) rather than retried for days."""

    __tablename__ = "erased_billing_customers"

    customer_hash: Mapped[str] = mapped_column("customerHash", Text, primary_key=True)
    erased_at: Mapped[datetime] = mapped_column("erasedAt", UTCDateTime())
