"""Random keyword data with the original's shapes (docs/original-app.md#mock-provider), for
development and trial users.

Changes from the original: no artificial sleep unless MOCK_PROVIDER_DELAY_MS is set (the
original slept 800 ms, which a serverless function pays for), and MOCK_PROVIDER_SEED makes the
data deterministic: with a seed, each keyword draws from its own generator seeded by
(seed, keyword), so the same keyword gets the same numbers whatever its position, batch or
container. Without a seed the numbers are random on every call, as before.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from datetime import UTC, date, datetime

from shared.providers.base import (
    COMPETITIONS,
    INTENTS,
    KeywordData,
    MonthlyTrend,
    RelatedKeywordData,
    SearchOptions,
)

RELATED_TEMPLATES = (
    "{kw} guide",
    "{kw} tutorial",
    "best {kw}",
    "{kw} tips",
    "how to {kw}",
    "{kw} for beginners",
    "{kw} examples",
    "{kw} tools",
    "{kw} software",
    "{kw} online",
    "free {kw}",
    "{kw} course",
    "{kw} training",
    "{kw} certification",
    "{kw} services",
    "{kw} agency",
    "{kw} consultant",
    "{kw} expert",
    "{kw} strategies",
    "{kw} techniques",
)


def utc_today() -> date:
    return datetime.now(UTC).date()


def trend_months(today: date, count: int = 12) -> list[tuple[int, int]]:
    """(year, month 1-12) for the `count` months ending with `today`'s, oldest first."""
    index = today.year * 12 + today.month - 1
    return [(i // 12, i % 12 + 1) for i in range(index - count + 1, index + 1)]


def seasonal_factor(month: int) -> float:
    """The original's seasonality, ±30% over the year: 1 + 0.3·sin(month₀/12 · 2π)."""
    return 1 + 0.3 * math.sin((month - 1) / 12 * 2 * math.pi)


class MockProvider:
    key = "mock"
    name = "Mock"

    def __init__(
        self,
        *,
        seed: int | None = None,
        delay_ms: int = 0,
        today: Callable[[], date] = utc_today,
    ) -> None:
        self.seed = seed
        self.delay_ms = delay_ms
        self._today = today
        self._random = random.Random()

    def keyword_data(self, keywords: list[str], options: SearchOptions) -> list[KeywordData]:
        self._pause()
        months = trend_months(self._today())
        rows: dict[str, KeywordData] = {}  # a keyword named twice is measured once
        for keyword in keywords:
            if keyword.strip() not in rows:
                rows[keyword.strip()] = self._keyword(keyword.strip(), months)
        return [rows[keyword.strip()] for keyword in keywords]

    def related_keywords(self, keyword: str, options: SearchOptions) -> list[RelatedKeywordData]:
        """The original's 20 templates around the seed, relevance 100 - 5·position."""
        self._pause()
        seed = keyword.strip()
        rng = self._rng("related", seed)
        return [
            {
                "keyword": template.format(kw=seed),
                "searchVolume": math.floor(rng.random() * 50_000),
                "difficulty": math.floor(rng.random() * 100),
                "cpc": rng.random() * 5,
                "competition": rng.choice(COMPETITIONS),
                "intent": rng.choice(INTENTS),
                "relevance": max(0, 100 - 5 * index),
            }
            for index, template in enumerate(RELATED_TEMPLATES)
        ]

    def _keyword(self, keyword: str, months: list[tuple[int, int]]) -> KeywordData:
        rng = self._rng("keyword", keyword)
        base = math.floor(rng.random() * 100_000)
        row: KeywordData = {
            "keyword": keyword,
            "searchVolume": base,
            "difficulty": math.floor(rng.random() * 100),
            "cpc": rng.random() * 10,
            "competition": rng.choice(COMPETITIONS),
            "intent": rng.choice(INTENTS),
        }
        row["trends"] = [self._trend(base, year, month, rng) for year, month in months]
        return row

    @staticmethod
    def _trend(base: int, year: int, month: int, rng: random.Random) -> MonthlyTrend:
        noise = 0.9 + rng.random() * 0.2  # ±10%
        volume = math.floor(base * seasonal_factor(month) * noise)
        return {"month": month, "year": year, "volume": max(0, volume)}

    def _rng(self, purpose: str, keyword: str) -> random.Random:
        if self.seed is None:
            return self._random
        return random.Random(f"{self.seed}:{purpose}:{keyword}")  # str seeds hash stably

    def _pause(self) -> None:
        if self.delay_ms > 0:
            time.sleep(self.delay_ms / 1000)
