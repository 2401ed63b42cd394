"""The languages each provider has keyword data in. DataForSEO lists its Google Ads languages
(`keywords_data/google_ads/languages`); the Google Ads provider knows the four language
constants the original mapped (docs/original-app.md#google-ads-provider).

A request's `language` (`en`, `en-US`, `pt-BR`, `zh-TW`) is sent as the listed code it names:
the whole tag when it is listed (`zh-CN`, `zh-TW`), else its primary subtag (`en-US` → `en`).
A language with no listed code is refused with a 400 before anything is counted (the original
sent every unmapped language as `en`, so users got English figures labelled as theirs).
"""

from __future__ import annotations

GOOGLE_ADS_LANGUAGES = frozenset(
    {
        "ar", "bg", "bn", "ca", "cs", "da", "de", "el", "en", "es", "et", "fa", "fi", "fr",
        "gu", "he", "hi", "hr", "hu", "id", "is", "it", "ja", "kn", "ko", "lt", "lv", "ml",
        "mr", "ms", "nl", "no", "pa", "pl", "pt", "ro", "ru", "sk", "sl", "sr", "sv", "ta",
        "te", "th", "tl", "tr", "uk", "ur", "vi", "zh-CN", "zh-TW",
    }
)  # fmt: skip


# Google Ads language constants (`languageConstants/{id}`) by request tag; others are refused.
GOOGLE_ADS_API_LANGUAGE_IDS: dict[str, int] = {
    "en": 1000, "en-US": 1000, "en-GB": 1000, "es": 1003, "fr": 1002, "de": 1001,
}  # fmt: skip


def available(tag: str, provider: str) -> bool:
    """Whether `provider` (a KEYWORD_API_PROVIDER key) has keyword data in language `tag`."""
    if provider == "google-ads":
        return tag in GOOGLE_ADS_API_LANGUAGE_IDS
    return provider_language(tag) is not None


def provider_language(tag: str) -> str | None:
    """The listed code `tag` names, or None when there is none."""
    if tag in GOOGLE_ADS_LANGUAGES:
        return tag
    primary = tag.split("-", 1)[0]
    return primary if primary in GOOGLE_ADS_LANGUAGES else None
