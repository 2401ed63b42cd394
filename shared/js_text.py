"""JS's view of a string, which the original's rules (zod's) are written in. No dependencies:
the providers check rows against a saved search's rules with it too."""

from __future__ import annotations

# What JS `String.prototype.trim()` and the regex class `\s` treat as whitespace (ECMAScript
# WhiteSpace + LineTerminator). Python's `str.strip()`/`\s` differ: they also take the ASCII
# separators U+001C..U+001F and U+0085, and miss U+FEFF, so the original's rules are spelled out.
JS_WHITESPACE = (
    "\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
)


def js_trim(value: str) -> str:
    """`value.trim()` as zod (JS) does it."""
    return value.strip(JS_WHITESPACE)


def js_length(value: str) -> int:
    """`value.length` in JS: UTF-16 code units, so a character beyond the BMP (most emoji)
    counts 2, and a lone surrogate (JS strings may hold one) counts 1. The original's length
    rules, and the records it reads back, use this unit."""
    return len(value.encode("utf-16-le", "surrogatepass")) // 2
