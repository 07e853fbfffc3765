"""The sandboxed template renderer shared by transactional and campaign mail.

Templates use `{{ name }}` placeholders; templates written for Datamailer (Django syntax)
render the same: `{% if %}`, `{% for %}` (with `{% empty %}` and `forloop.counter`), and
the filters `safe`, `striptags`, `default:"x"`, `upper`, `lower`, `title`,
`linebreaksbr` (`templating.django` rewrites the syntax). Values are HTML-escaped in HTML
parts only. Rendering runs in a hardened sandbox (`templating.sandbox`) bounded in time
(`RENDER_TIMEOUT_SECONDS`), loop iterations (`MAX_LOOP_ITERATIONS`), the size of every
value an expression builds, nested values included (`MAX_VALUE_WEIGHT`), the total a
render builds (`MAX_RENDER_ALLOCATION`) and output size (`MAX_OUTPUT_CHARS`); a source
over `MAX_SOURCE_BYTES` is refused. Only plain values print: a method, `range`, `loop` or
any other Python object in `{{ }}` (or given to a text filter or `~`) fails the render
with `render_failed` rather than showing its repr. Every failure is a `TemplateError`
with a short reason, never anything else.

Those bounds hold within one process; `templating.pool.RenderPool` runs renders in
worker processes with a hard timeout and a memory cap, for callers (the API) whose
event loop must keep serving whatever a template does.
"""

import functools
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jinja2 import Template
from jinja2 import TemplateError as JinjaTemplateError

from datamailer_core.errors import ValidationFailed
from datamailer_core.templating.django import translate_django
from datamailer_core.templating.sandbox import (
    BUDGET,
    HTML_ENV,
    MAX_LOOP_ITERATIONS,
    MAX_OUTPUT_CHARS,
    MAX_RENDER_ALLOCATION,
    MAX_SOURCE_BYTES,
    MAX_VALUE_WEIGHT,
    RENDER_TIMEOUT_SECONDS,
    TEXT_ENV,
    Budget,
    Harden,
    LimitExceeded,
    Refused,
)

__all__ = [
    "MAX_LOOP_ITERATIONS",
    "MAX_OUTPUT_CHARS",
    "MAX_RENDER_ALLOCATION",
    "MAX_SOURCE_BYTES",
    "MAX_VALUE_WEIGHT",
    "RENDER_TIMEOUT_SECONDS",
    "CompiledTemplate",
    "Rendered",
    "TemplateError",
    "clean_subject",
    "compile_template",
    "is_storable_text",
    "missing_context",
    "render",
    "render_message",
    "translate_django",
    "validate_message_templates",
]


class TemplateError(Exception):
    """`reason`: `too_long`, `invalid_template`, `render_failed`, `render_limit_exceeded`
    or `output_too_large`; `field` names the part (`subject`, `html_body`, `text_body`)
    when known. `detail` is for logs; it may quote the template, never the context."""

    def __init__(self, reason: str, *, field: str | None = None, detail: str = "") -> None:
        self.reason, self.field, self.detail = reason, field, detail
        super().__init__(f"{field or 'template'}: {reason}" + (f" ({detail})" if detail else ""))

    def __reduce__(self) -> tuple[Any, ...]:
        # Crosses process boundaries (`templating.pool`) with its keyword arguments intact.
        return (_template_error, (self.reason, self.field, self.detail))

    def for_field(self, name: str) -> "TemplateError":
        return TemplateError(self.reason, field=name, detail=self.detail)

    def as_validation_error(self) -> ValidationFailed:
        return ValidationFailed(str(self), fields={self.field or "template": self.reason})


def _template_error(reason: str, field: str | None, detail: str) -> TemplateError:
    return TemplateError(reason, field=field, detail=detail)


@dataclass(frozen=True)
class CompiledTemplate:
    template: Template = field(repr=False)
    html: bool


@dataclass(frozen=True)
class Rendered:
    subject: str
    html_body: str | None
    text_body: str | None


@functools.lru_cache(maxsize=128)
def _compile(source: str, html: bool) -> CompiledTemplate:
    if len(source.encode("utf-8", "surrogatepass")) > MAX_SOURCE_BYTES:
        raise TemplateError("too_long", detail=f"over {MAX_SOURCE_BYTES} bytes")
    env = HTML_ENV if html else TEXT_ENV
    try:
        tree = Harden().visit(env.parse(translate_django(source)))
        tree.set_environment(env)
        code = env.compile(tree)
        template = env.template_class.from_code(env, code, env.make_globals(None), None)
    except Refused as exc:
        raise TemplateError("invalid_template", detail=str(exc)) from None
    except (JinjaTemplateError, SyntaxError, ValueError, TypeError, RecursionError) as exc:
        raise TemplateError("invalid_template", detail=str(exc)[:200]) from None
    return CompiledTemplate(template=template, html=html)


def compile_template(source: str, *, html: bool) -> CompiledTemplate:
    """Compile once (cached); raises `TemplateError` (`too_long`, `invalid_template`)."""
    return _compile(source, html)


def render(compiled: CompiledTemplate, context: Mapping[str, Any], *, deadline: float | None = None) -> str:
    """Render within the time and output bounds; raises `TemplateError`."""
    budget = Budget(deadline if deadline is not None else time.monotonic() + RENDER_TIMEOUT_SECONDS)
    token = BUDGET.set(budget)
    chunks: list[str] = []
    size = 0
    try:
        for chunk in compiled.template.generate(dict(context)):
            size += len(chunk)
            if size > MAX_OUTPUT_CHARS:
                raise LimitExceeded("output_too_large")
            budget.tick()
            chunks.append(chunk)
    except LimitExceeded as exc:
        raise TemplateError(exc.reason) from None
    except Exception as exc:  # sandboxed template code may raise anything; it is the template's fault
        raise TemplateError("render_failed", detail=type(exc).__name__) from None
    finally:
        BUDGET.reset(token)
    out = "".join(chunks)
    if not is_storable_text(out):
        # e.g. `{{ "\\x00" }}`: PostgreSQL text and email headers cannot carry it.
        raise TemplateError("render_failed", detail="NUL or unpaired surrogate in the output")
    return out


def is_storable_text(value: str) -> bool:
    """No NUL and valid UTF-8 (no unpaired surrogate): what PostgreSQL text accepts."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def clean_subject(subject: str) -> str:
    """One header line: CR/LF (and other line breaks) become spaces."""
    return " ".join(subject.splitlines()).strip()


def render_message(
    subject: str, html_body: str | None, text_body: str | None, context: Mapping[str, Any]
) -> Rendered:
    """Render the three parts under one deadline; `TemplateError.field` names the part."""
    deadline = time.monotonic() + RENDER_TIMEOUT_SECONDS

    def part(name: str, source: str | None, html: bool) -> str | None:
        if source is None:
            return None
        try:
            return render(compile_template(source, html=html), context, deadline=deadline)
        except TemplateError as exc:
            raise exc.for_field(name) from None

    rendered_subject = part("subject", subject, False) or ""
    return Rendered(
        subject=clean_subject(rendered_subject),
        html_body=part("html_body", html_body, True),
        text_body=part("text_body", text_body, False),
    )


def validate_message_templates(
    subject: str | None, html_body: str | None, text_body: str | None
) -> dict[str, str]:
    """Field errors (`{"html_body": "invalid_template"}`) for parts that do not compile."""
    fields: dict[str, str] = {}
    for name, source, is_html in (
        ("subject", subject, False),
        ("html_body", html_body, True),
        ("text_body", text_body, False),
    ):
        if source is None:
            continue
        try:
            compile_template(source, html=is_html)
        except TemplateError as exc:
            fields[name] = exc.reason
    return fields


def missing_context(required: Iterable[str], context: Mapping[str, Any]) -> list[str]:
    """The required names (dotted paths allowed) that are absent or null in `context`."""
    missing: list[str] = []
    for name in required:
        value: Any = context
        for part in name.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if value is None:
            missing.append(name)
    return missing
