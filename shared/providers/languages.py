"""The languages DataForSEO's Google Ads endpoints accept (`keywords_data/google_ads/languages`).

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


def provider_language(tag: str) -> str | None:
    """The listed code `tag` names, or None when there is none."""
    if tag in GOOGLE_ADS_LANGUAGES:
        return tag
    primary = tag.split("-", 1)[0]
    return primary if primary in GOOGLE_ADS_LANGUAGES else None
