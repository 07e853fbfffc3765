"""Server-rendered pages for recipients (unsubscribe, preferences, verification): Jinja2
templates with autoescaping on, so every name, address and tag is escaped; no
JavaScript, and the page tells caches and search engines to keep out."""

from functools import lru_cache
from pathlib import Path
from typing import Any, Final

from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

TEMPLATES: Final = Path(__file__).parent / "templates"
PAGE_HEADERS: Final = {
    "Cache-Control": "no-store",
    "X-Robots-Tag": "noindex, nofollow",
    "Referrer-Policy": "no-referrer",
    # Inline styles only; no scripts, frames or form posts elsewhere.
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
}


@lru_cache(maxsize=1)
def environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"], default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )


def page(name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    html = environment().get_template(name).render(**context)
    return HTMLResponse(html, status_code=status_code, headers=PAGE_HEADERS)


def mask_email(email: str) -> str:
    """`ada.lovelace@example.com` → `a**********e@example.com`: enough to recognise one's
    own address, not enough to read someone else's from a forwarded link."""
    local, _, domain = email.rpartition("@")
    if not local:
        return "***"
    if len(local) <= 2:
        return f"{local[0]}*@{domain}"
    return f"{local[0]}{'*' * (len(local) - 2)}{local[-1]}@{domain}"
