"""A content brief from one Google results page (docs/original-app.md#serp-and-content-brief):
the top results, a word-count range, recurring topics, headings, questions and related phrases.

Pure functions over DataForSEO's `serp/google/organic/live/advanced` result (or the mock
page), so the rules are tested without a network. The stop-word list is ours (the original's
was about 80 common English words; the exact list is not part of the contract).
"""

from __future__ import annotations

import html
import html.entities
import re
from collections import Counter
from collections.abc import Mapping
from itertools import pairwise
from typing import Any, Literal, NotRequired

from typing_extensions import TypedDict  # pydantic validates cached briefs: it needs this on 3.11

from shared.storable_text import storable

Importance = Literal["high", "medium", "low"]
DEFAULT_WORD_COUNT = 1500
MAX_RESULTS = 10
MAX_TOPICS = 15
MAX_HEADINGS = 10
MAX_QUESTIONS = 10
MAX_PAA = 5
MAX_RELATED = 15
# What a results page may give here, beyond which its text is junk that would bloat every
# answer and cached brief: Google shows about 60 characters of a title and 160 of a snippet,
# browsers keep URLs to 2,048 and DNS names to 253.
MAX_TEXT_CHARS = 1_000  # a title, description or question, cut
MAX_URL_CHARS = 2_048  # longer: no address, so the item is skipped
MAX_DOMAIN_CHARS = 253  # longer: no domain

STOP_WORDS = frozenset(
    {
        "the", "and", "for", "are", "but", "not", "you", "all", "any", "can", "had", "her", "was",
        "one", "our", "out", "has", "him", "his", "how", "its", "may", "new", "now", "old", "see",
        "two", "way", "who", "did", "get", "let", "put", "say", "she", "too", "use", "that", "with",
        "have", "this", "will", "your", "from", "they", "been", "more", "when", "what", "were",
        "than", "them", "then", "into", "some", "could", "their", "there", "which", "would",
        "about",
        "after", "other", "these", "those", "where", "while", "being", "both", "each", "just",
        "most", "over", "such", "very", "also", "only", "same", "should", "because", "before",
        "between", "does", "doing", "down", "during", "under", "until", "above", "below", "again",
        "further", "here", "once", "off", "own", "why", "whom",
    }
)  # fmt: skip
_NON_WORD = re.compile(r"[^\w\s]|_")
_TRAILER = re.compile(r"\s+[-|]\s+.*$")
_NUMBERING = re.compile(r"^\d+\.\s*")
# A start or end tag (its name in group 1), a comment or declaration, as HTML starts one (`<`
# then a letter, `/`, `!` or `?`): `a < b` and `<3` are text. No `<` inside, so a scan never
# passes the next one.
_TAG = re.compile(r"<(?:/?([a-zA-Z][a-zA-Z0-9]*+)|[!?/])[^<>]*>")  # possessive: linear
# Tags inside a run of text (`Java<b>Script</b>` is one word); any other tag breaks words.
_INLINE = frozenset(
    {"a", "abbr", "b", "bdi", "bdo", "cite", "code", "data", "dfn", "em", "font", "i", "kbd",
     "mark", "q", "s", "samp", "small", "span", "strong", "sub", "sup", "time", "u", "var", "wbr"}
)  # fmt: skip
# The start and end tags of the elements whose content is not text (dropped whole).
_NOT_TEXT = re.compile(r"<(script|style)(?=[\s/>])", re.IGNORECASE)
_NOT_TEXT_END = {
    name: re.compile(rf"</{name}(?=[\s/>])", re.IGNORECASE) for name in ("script", "style")
}
# A character reference as HTML writes one whole (with its `;`), decoded only if HTML names it:
# `&section=2` in a snippet's query string, or `&section;`, is text, which `html.unescape`
# alone reads as `§ion`.
_REFERENCE = re.compile(r"&(?:#[0-9]+|#[xX][0-9a-fA-F]+|[A-Za-z][A-Za-z0-9]*);")


class SerpResult(TypedDict):
    position: int
    title: str
    url: str
    domain: str
    description: str
    wordCount: NotRequired[int]


class Serp(TypedDict):
    results: list[SerpResult]
    questions: list[str]  # "people also ask", in order, de-duplicated
    totalResults: int


class WordCount(TypedDict):
    min: int
    max: int
    average: int


class Topic(TypedDict):
    topic: str
    frequency: int
    importance: Importance


class Heading(TypedDict):
    text: str
    level: Literal["h2"]
    source: str  # "Common pattern", or the domain of the result the title comes from


class Question(TypedDict):
    question: str
    source: Literal["paa", "competitor", "inferred"]  # the original also wrote "competitor"


class Brief(TypedDict):
    """The brief in the original's shape (docs/original-app.md#post-apicontent-brief): what the
    route answers and caches, and what a cached brief must be to be served."""

    keyword: str
    location: str
    generatedAt: str
    serpResults: list[SerpResult]
    totalResults: int
    recommendedWordCount: WordCount
    topics: list[Topic]
    suggestedHeadings: list[Heading]
    questionsToAnswer: list[Question]
    relatedKeywords: list[str]
    mockData: bool
    provider: str


def parse_serp(result: Any) -> Serp:
    """DataForSEO's `tasks[0].result[0]`: organic items with a title and a url (the first 10)
    and the questions of "people also ask" items; a missing domain or description is empty,
    never invented. Every string is storable (`storable`); titles, descriptions and questions
    are plain text (`plain`), so no markup reaches the topics, headings or questions, and
    bounded (MAX_TEXT_CHARS and the others); a count that is not a positive integer is 0."""
    items = result.get("items") if isinstance(result, Mapping) else None
    organic: list[SerpResult] = []
    questions: list[str] = []
    for index, item in enumerate(items if isinstance(items, list) else []):
        if not isinstance(item, Mapping):
            continue
        if item.get("type") == "organic" and len(organic) < MAX_RESULTS:
            title, url = _cut(plain(item.get("title"))), _bounded(item.get("url"), MAX_URL_CHARS)
            if not title or not url:  # nothing to show or to link to
                continue
            rank = item.get("rank_group")
            row: SerpResult = {
                "position": rank if isinstance(rank, int) and rank > 0 else index + 1,
                "title": title,
                "url": url,
                "domain": _bounded(item.get("domain"), MAX_DOMAIN_CHARS),
                "description": _cut(plain(item.get("description"))),
            }
            extra = item.get("extra")
            words = extra.get("word_count") if isinstance(extra, Mapping) else None
            if isinstance(words, int) and not isinstance(words, bool) and words >= 0:
                row["wordCount"] = words
            organic.append(row)
        elif item.get("type") == "people_also_ask":
            # The questions are the elements' titles; an `expanded_element` is an answer
            # (a page's title), which the original took for a question too.
            elements = item.get("items")
            for element in elements if isinstance(elements, list) else []:
                title = _cut(plain(element.get("title") if isinstance(element, Mapping) else None))
                if title and title not in questions:
                    questions.append(title)
    total = result.get("se_results_count") if isinstance(result, Mapping) else None
    total = total if isinstance(total, int) and not isinstance(total, bool) and total > 0 else 0
    return {"results": organic, "questions": questions, "totalResults": total}


def _text(value: Any) -> str:
    """A provider's string, storable and trimmed; anything else is empty."""
    return storable(value).strip() if isinstance(value, str) else ""


def _cut(text: str) -> str:
    """`text`'s first MAX_TEXT_CHARS, without the whitespace the cut may leave at its end."""
    return text[:MAX_TEXT_CHARS].rstrip()


def _bounded(value: Any, limit: int) -> str:
    """`_text`, or empty when longer than `limit`: an address or name cut would be wrong."""
    text = _text(value)
    return text if len(text) <= limit else ""


def plain(value: Any) -> str:
    """A provider's title, snippet or question as plain text: scripts and styles dropped,
    tags dropped (a word break unless inline), references decoded, whitespace collapsed,
    storable; anything but a string is empty. Results pages can carry markup and references
    (`&amp;`), which would otherwise become topics ("amp script") and headings. References are
    decoded last, so an escaped `&lt;b&gt;` stays the text it is."""
    text = _text(value)
    if "<" in text:
        text = _TAG.sub(_tag_gap, _without_elements(text))
    if "&" in text:
        # Never NUL nor a surrogate: HTML reads those references as U+FFFD.
        text = _REFERENCE.sub(_decoded, text)
    return " ".join(text.split())


def _tag_gap(tag: re.Match[str]) -> str:
    return "" if (tag[1] or "").lower() in _INLINE else " "


def _decoded(reference: re.Match[str]) -> str:
    found = reference[0]
    named = not found.startswith("&#")
    return found if named and found[1:] not in html.entities.html5 else html.unescape(found)


def _without_elements(text: str) -> str:
    """`text` less each script or style element (a word break in its place), in one pass; one
    never closed runs to the end, as HTML reads it (a snippet cut inside a script)."""
    kept, at = [], 0
    while (start := _NOT_TEXT.search(text, at)) is not None:
        kept += [text[at : start.start()], " "]
        close = _NOT_TEXT_END[start[1].lower()].search(text, start.end())
        end = text.find(">", close.end()) if close is not None else -1
        if end < 0:
            return "".join(kept)
        at = end + 1
    return "".join([*kept, text[at:]])


def mock_serp(keyword: str) -> Serp:
    """The original's mock page: five results with fixed word counts, five questions."""
    sites = [
        ("example.com", "Complete Guide", 2500),
        ("guide.com", "Ultimate Tutorial", 1800),
        ("tips.com", "Best Practices and Tips", 2200),
        ("compare.com", "Comparison and Reviews", 1500),
        ("learn.com", "Beginner Basics Explained", 3000),
    ]
    results: list[SerpResult] = [
        {
            "position": index + 1,
            "title": f"{keyword.strip()} {suffix}",
            "url": f"https://{domain}/{'-'.join(keyword.lower().split())}",
            "domain": domain,
            "description": f"Learn about {keyword.strip()}: {suffix.lower()} for {domain}.",
            "wordCount": words,
        }
        for index, (domain, suffix, words) in enumerate(sites)
    ]
    kw = keyword.strip()
    questions = [
        f"What is {kw}?",
        f"How does {kw} work?",
        f"What are the best {kw} tools?",
        f"How much does {kw} cost?",
        f"Is {kw} worth it?",
    ]
    return {"results": results, "questions": questions, "totalResults": 1_250_000}


def word_count_range(results: list[SerpResult]) -> WordCount:
    counts = [r["wordCount"] for r in results if r.get("wordCount", 0) > 0]
    average = sum(counts) / len(counts) if counts else DEFAULT_WORD_COUNT
    return {"min": round(average * 0.8), "max": round(average * 1.3), "average": round(average)}


def phrases(results: list[SerpResult]) -> Counter[str]:
    """Consecutive pairs of meaningful words over every title and description."""
    counts: Counter[str] = Counter()
    for result in results:
        for text in (result.get("title", ""), result.get("description", "")):
            words = [
                w
                for w in _NON_WORD.sub(" ", text.lower()).split()
                if len(w) > 2 and w not in STOP_WORDS
            ]
            counts.update(f"{a} {b}" for a, b in pairwise(words))
    return counts


def importance(frequency: int) -> Importance:
    return "high" if frequency >= 5 else "medium" if frequency >= 3 else "low"


def topics(counts: Counter[str]) -> list[Topic]:
    recurring = [(phrase, n) for phrase, n in counts.most_common() if n >= 2]
    return [
        {"topic": phrase, "frequency": n, "importance": importance(n)}
        for phrase, n in recurring[:MAX_TOPICS]
    ]


def headings(keyword: str, results: list[SerpResult]) -> list[Heading]:
    kw = keyword.strip()
    found: list[Heading] = [
        {"text": text, "level": "h2", "source": "Common pattern"}
        for text in (f"What is {kw}", f"How to {kw}", f"Why {kw}", f"Best {kw}", f"{kw} Benefits")
    ]
    for result in results[:5]:
        title = result.get("title", "")
        if not 10 < len(title) < 80:
            continue
        text = _NUMBERING.sub("", _TRAILER.sub("", title)).strip()
        if len(text) > 10 and text.lower() != kw.lower():
            found.append({"text": text, "level": "h2", "source": result.get("domain", "")})
    return found[:MAX_HEADINGS]


def questions(keyword: str, asked: list[str]) -> list[Question]:
    kw = keyword.strip()
    found: list[Question] = [{"question": q, "source": "paa"} for q in asked[:MAX_PAA]]
    seen = {q.lower() for q in asked[:MAX_PAA]}
    for question in (
        f"What is {kw}?",
        f"How does {kw} work?",
        f"Why is {kw} important?",
        f"What are the benefits of {kw}?",
        f"How to get started with {kw}?",
    ):
        if question.lower() not in seen:
            found.append({"question": question, "source": "inferred"})
            seen.add(question.lower())
    return found[:MAX_QUESTIONS]


def related_phrases(keyword: str, counts: Counter[str]) -> list[str]:
    kw = keyword.strip().lower()
    kept = [p for p, _ in counts.most_common() if not (p == kw or kw in p or p in kw)]
    return kept[:MAX_RELATED]


def build_brief(
    keyword: str, location: str, serp: Serp, *, provider: str, mock: bool, generated_at: str
) -> Brief:
    """The brief (`Brief`) built from one results page."""
    counts = phrases(serp["results"])
    return {
        "keyword": keyword,
        "location": location,
        "generatedAt": generated_at,
        "serpResults": serp["results"],
        "totalResults": serp["totalResults"],
        "recommendedWordCount": word_count_range(serp["results"]),
        "topics": topics(counts),
        "suggestedHeadings": headings(keyword, serp["results"]),
        "questionsToAnswer": questions(keyword, serp["questions"]),
        "relatedKeywords": related_phrases(keyword, counts),
        "mockData": mock,
        "provider": provider,
    }
