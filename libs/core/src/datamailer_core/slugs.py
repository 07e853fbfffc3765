"""Tag slugs, made the way Django's `slugify` makes them (wire compatibility: a client
that names a tag `Weekly News` gets `weekly-news`, as it did before)."""

import re
import unicodedata

_NOT_SLUG = re.compile(r"[^\w\s-]")
_SEPARATORS = re.compile(r"[-\s]+")


def slugify(value: str) -> str:
    """NFKD, then ASCII (what does not encode is dropped), lowercase, only word
    characters, spaces and hyphens kept; runs of spaces and hyphens become one hyphen, and
    leading or trailing hyphens and underscores go. Empty when nothing is left."""
    ascii_value = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode("ascii")
    return _SEPARATORS.sub("-", _NOT_SLUG.sub("", ascii_value.lower())).strip("-_")
