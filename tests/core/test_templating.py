import asyncio
import time
import tracemalloc
from typing import Any

import pytest

from datamailer_core.templating import (
    MAX_OUTPUT_CHARS,
    TemplateError,
    compile_template,
    missing_context,
    render,
    render_message,
    translate_django,
)
from datamailer_core.templating.pool import RenderPool
from tests.core.pool_helpers import allocate, sleep


def html(source: str, **context: Any) -> str:
    return render(compile_template(source, html=True), context)


def text(source: str, **context: Any) -> str:
    return render(compile_template(source, html=False), context)


def render_error(source: str, *, is_html: bool = True, **context: Any) -> str:
    started = time.monotonic()
    with pytest.raises(TemplateError) as caught:
        render(compile_template(source, html=is_html), context)
    assert time.monotonic() - started < 2.0, "a bounded render must give up quickly"
    return caught.value.reason


def compile_error(source: str) -> str:
    with pytest.raises(TemplateError) as caught:
        compile_template(source, html=True)
    return caught.value.reason


# --- Django-compatible syntax ---------------------------------------------------------


def test_values_are_escaped_in_html_but_not_in_text() -> None:
    value = "<script>alert('x')</script> & co"
    assert html("Hi {{ name }}", name=value) == "Hi &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; co"
    assert text("Hi {{ name }}", name=value) == f"Hi {value}"


def test_safe_and_striptags_pair_renders_html_and_plain_text() -> None:
    body = "<p>Hello &amp; <b>welcome</b></p>\n<p>Bye</p>"
    assert html("{{ body|safe }}", body=body) == body
    assert text("{{ body|striptags }}", body=body) == "Hello & welcome\nBye"
    # In HTML the stripped text is escaped again, so it reads the same.
    assert html("{{ body|striptags }}", body=body) == "Hello &amp; welcome\nBye"


@pytest.mark.parametrize(
    ("source", "context", "expected"),
    [
        ('{{ name|default:"friend" }}', {}, "friend"),
        ('{{ name|default:"friend" }}', {"name": ""}, "friend"),
        ('{{ name|default:"friend" }}', {"name": None}, "friend"),
        ('{{ name|default:"friend" }}', {"name": "Ada"}, "Ada"),
        ("{{ name|default:'a|b:c' }}", {}, "a|b:c"),
        ("{{ name|default:fallback }}", {"fallback": "Fallback"}, "Fallback"),
        ("{{ count|default:0 }}", {}, "0"),
        ('{{ name|default:"x"|upper }}', {"name": "ada"}, "ADA"),
        ('{{ name|default("jinja") }}', {}, "jinja"),
    ],
)
def test_default_filter_uses_django_syntax_and_semantics(
    source: str, context: dict[str, Any], expected: str
) -> None:
    assert text(source, **context) == expected


def test_case_filters() -> None:
    assert text("{{ s|upper }} {{ s|lower }} {{ s|title }}", s="hello World") == (
        "HELLO WORLD hello world Hello World"
    )


def test_linebreaksbr_escapes_then_breaks_lines_in_html() -> None:
    assert html("{{ s|linebreaksbr }}", s="a < b\r\nc") == "a &lt; b<br>c"
    assert text("{{ s|linebreaksbr }}", s="a < b\nc") == "a < b<br>c"


def test_if_and_for_with_empty_and_forloop_counter() -> None:
    source = (
        "{% if user.vip %}VIP {% elif user %}Member {% else %}Guest {% endif %}"
        "{% for item in items %}{{ forloop.counter }}.{{ item.name }}{% if not forloop.last %}, {% endif %}"
        "{% empty %}nothing{% endfor %}"
    )
    items = [{"name": "Book"}, {"name": "Pen"}]
    assert text(source, user={"vip": True}, items=items) == "VIP 1.Book, 2.Pen"
    assert text(source, user={"vip": False}, items=[]) == "Member nothing"
    assert text(source) == "Guest nothing"


def test_undefined_values_render_empty_like_django() -> None:
    assert text("[{{ missing }}][{{ user.profile.name }}][{{ items.0 }}]", user={}) == "[][][]"


def test_django_rewrite_touches_only_template_tags() -> None:
    source = 'Plain |default:"x" text {{ a|default:"b|c:d" }} {# {{ x|default:"y" }} #}'
    assert (
        translate_django(source)
        == 'Plain |default:"x" text {{ a|default("b|c:d") }} {# {{ x|default:"y" }} #}'
    )
    raw = '{% raw %}{{ a|default:"x" }}{% endraw %}'
    assert text(raw) == '{{ a|default:"x" }}'


def test_trailing_newline_is_kept() -> None:
    assert text("Bye\n") == "Bye\n"


# --- sandbox --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ self.__init__.__globals__ }}",
        "{{ lipsum.__globals__['os'] }}",
        "{{ namespace }}{{ joiner }}{{ dict }}{{ config }}",
        "{{ user.__dict__ }}",
        "{{ ''['__class__'] }}",
        "{{ ''|attr('__class__') }}",
    ],
)
def test_python_internals_are_out_of_reach(source: str) -> None:
    # Either nothing at all is rendered or the render fails as a template error.
    try:
        out = html(source, user={"a": 1})
    except TemplateError as exc:
        out = exc.reason
    assert out in ("", "render_failed", "invalid_template")


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'a'.ljust(1000000000) }}",
        "{{ '{:>999999999}'.format(1) }}",
        "{{ '%999999999s' % 1 }}",
        "{{ items.append(1) }}",
        "{{ range.__call__(3) }}",
    ],
)
def test_unsafe_calls_fail_as_render_errors(source: str) -> None:
    assert render_error(source, items=[]) == "render_failed"


@pytest.mark.parametrize("source", ['{{ "a\\x00b" }}', '{{ "\\ud800" }}'])
def test_output_postgres_cannot_store_is_a_render_error(source: str) -> None:
    assert render_error(source) == "render_failed"


def test_a_huge_range_does_not_hang() -> None:
    assert render_error("{% for i in range(10**9) %}x{% endfor %}") == "render_failed"


def test_nested_loops_are_cut_off() -> None:
    source = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
    assert render_error(source) == "render_limit_exceeded"
    over_context = "{% for a in xs %}{% for b in xs %}{% for c in xs %}{% endfor %}{% endfor %}{% endfor %}"
    assert render_error(over_context, xs=list(range(1000))) == "render_limit_exceeded"


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'x' * 10**9 }}",
        "{{ ['x'] * 10**9 }}",
        "{% set s = 'xxxxxxxxxx' %}" + "{% set s = s ~ s %}" * 40 + "{{ s|length }}",
        "{% set s = 'xxxxxxxxxx' %}" + "{% set s = s + s %}" * 40 + "{{ s|length }}",
        "{{ big }}{{ big }}",
        "{% for i in range(100) %}{{ big }}{% endfor %}",
        "{{ pct|urlencode }}",
        "{{ range(100000)|join(big) }}",
    ],
)
def test_output_is_bounded(source: str) -> None:
    big = "y" * (MAX_OUTPUT_CHARS // 2 + 1)
    assert render_error(source, big=big, pct="%" * len(big)) == "output_too_large"


@pytest.mark.parametrize(
    "source",
    [
        # `str()` of these is one C call; counting only the outer list let them through.
        "{{ [[1] * 10000] * 10000 }}",
        "{{ [[1] * 999999] * 999999 }}",
        "{% set row = [1] * 1000 %}{{ ([row] * 1000) * 100 }}",
        "{% set row = [1] * 1000 %}{% set g = [row] * 1000 %}" + "{% set g = g + g %}" * 7 + "{{ g|length }}",
        "{% set s = 'x' * 1000000 %}{{ ([s] * 1000)|length }}",
        "{% set s = 'x' * 1000000 %}{{ (s, s, s)|length }}",
        "{% set s = 'x' * 1000000 %}{{ {'a': s, 'b': s}|length }}",
        "{% set s = 'x' * 1000000 %}{% set t = [s] %}{{ [t, t, t]|first|length }}",
        "{% set row = [1] * 1000 %}{% set g = [row] * 1000 %}{{ [g, g]|join }}",
        "{% set row = ['ab'] * 1000 %}{{ ([row] * 1000)|string }}",
    ],
)
def test_nested_values_are_bounded_by_what_they_hold(source: str) -> None:
    tracemalloc.start()
    try:
        reason = render_error(source)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert reason == "output_too_large"
    assert peak < 64 * 1024 * 1024, f"{peak // 2**20} MiB"


def test_a_render_may_build_only_so_much_in_total() -> None:
    # Each value is allowed; building one again and again until the deadline is not.
    source = "{% set s = 'x' * 1000000 %}{% for i in range(100) %}{{ (s + 'y')|length }}{% endfor %}"
    assert render_error(source) == "render_limit_exceeded"


def test_values_within_the_bounds_still_render() -> None:
    assert text("{{ ([[1] * 3] * 2) + [[2]] }}") == "[[1, 1, 1], [1, 1, 1], [2]]"
    assert text("{{ ('ab' * 3) ~ '!' }}") == "ababab!"
    assert text("{{ [[1] * 1000] * 300 }}") == str([[1] * 1000] * 300)
    assert text("{{ (big * 2)|length }}", big=["x"] * 1000) == "2000"


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'a'.format }}",
        "{{ 'a'.upper }}",
        "{{ range }}",
        "{{ range(3) }}",
        "{{ {'a': 1}.items() }}",
        "{% for x in xs %}{{ loop }}{% endfor %}",
        "{% for x in xs %}{{ loop.cycle }}{% endfor %}",
        "{{ ['a'.upper] }}",
        "{{ {'k': range} }}",
        "{{ 'a'.upper|upper }}",
        "{{ 'a'.upper|string }}",
        "{{ 'a'.upper ~ '' }}",
        "{{ ['a'.upper]|join(',') }}",
    ],
)
def test_python_objects_are_never_printed(source: str) -> None:
    assert render_error(source, xs=[1]) == "render_failed"
    assert render_error(source, is_html=False, xs=[1]) == "render_failed"


def test_plain_values_print_as_before() -> None:
    assert (
        text("{{ [1, 'a', None, 2.5, true] }} {{ {'k': (1, 2)} }}")
        == "[1, 'a', None, 2.5, True] {'k': (1, 2)}"
    )
    assert text(
        "{{ d.keys()|join(',') }}|{% for k, v in d.items() %}{{ k }}={{ v }}{% endfor %}", d={"a": 1}
    ) == ("a|a=1")
    assert text("{% for x in xs %}{{ loop.cycle('odd', 'even') }}{% endfor %}", xs=[1, 2]) == "oddeven"
    assert text("{{ missing }}{{ missing|upper }}") == ""


def test_integer_growth_is_bounded() -> None:
    assert render_error("{{ 10**100000 }}") == "render_limit_exceeded"
    assert render_error("{% set n = 2**4000 %}{{ n * n }}") == "render_limit_exceeded"


@pytest.mark.parametrize(
    "source",
    [
        "{% macro f() %}x{% endmacro %}",
        "{% call f() %}x{% endcall %}",
        "{% set x %}captured{% endset %}",
        "{% filter upper %}x{% endfilter %}",
        "{% include 'other.html' %}",
        "{% import 'other.html' as o %}",
        "{% extends 'base.html' %}",
        "{% for x in xs recursive %}{{ loop(x.children) }}{% endfor %}",
        "{% if %}",
        "{{ x|date:'Y' }}",
    ],
)
def test_unsupported_statements_fail_to_compile(source: str) -> None:
    assert compile_error(source) == "invalid_template"


def test_source_over_100_kb_is_refused() -> None:
    compile_template("x" * 100 * 1024, html=True)
    assert compile_error("x" * (100 * 1024 + 1)) == "too_long"


# --- messages -------------------------------------------------------------------------


def test_render_message_renders_every_part_and_keeps_the_subject_on_one_line() -> None:
    rendered = render_message(
        "Hello {{ name }}\r\nBcc: victim@example.com",
        "<p>{{ name }}</p>",
        "Hi {{ name }}",
        {"name": "<Ada>\nBcc: x@example.com"},
    )
    assert "\n" not in rendered.subject
    assert "\r" not in rendered.subject
    assert rendered.subject == "Hello <Ada> Bcc: x@example.com Bcc: victim@example.com"
    assert rendered.html_body == "<p>&lt;Ada&gt;\nBcc: x@example.com</p>"
    assert rendered.text_body == "Hi <Ada>\nBcc: x@example.com"
    assert render_message("S", None, None, {}).html_body is None


def test_render_message_names_the_failing_part() -> None:
    with pytest.raises(TemplateError) as caught:
        render_message("ok", "{{ 'x' * 10**9 }}", None, {})
    assert (caught.value.field, caught.value.reason) == ("html_body", "output_too_large")
    assert caught.value.as_validation_error().fields == {"html_body": "output_too_large"}


def test_missing_context_names_absent_and_null_values() -> None:
    context = {"a": 1, "b": None, "user": {"name": "Ada", "email": None}}
    required = ["a", "b", "c", "user.name", "user.email", "user.name.first"]
    assert missing_context(required, context) == ["b", "c", "user.email", "user.name.first"]


# --- the render pool ------------------------------------------------------------------


async def test_the_pool_renders_and_keeps_template_errors() -> None:
    async with RenderPool(workers=1) as pool:
        rendered = await pool.run(
            render_message, "Hi {{ name }}", "<p>{{ name }}</p>", None, {"name": "<Ada>"}
        )
        assert rendered.html_body == "<p>&lt;Ada&gt;</p>"
        with pytest.raises(TemplateError) as caught:
            await pool.run(render_message, "ok", "{{ [[1] * 10000] * 10000 }}", None, {})
        assert (caught.value.field, caught.value.reason) == ("html_body", "output_too_large")


async def test_the_pool_kills_a_call_past_its_timeout_and_retries_the_others() -> None:
    async with RenderPool(workers=2, timeout=1.5) as pool:
        await pool.start()
        started = time.monotonic()
        runaway = asyncio.create_task(pool.run(sleep, 30))
        await asyncio.sleep(0.9)
        # Still running when the runaway's pool is killed: retried on the new one.
        bystander = asyncio.create_task(pool.run(sleep, 0.8))
        with pytest.raises(TemplateError) as caught:
            await runaway
        assert caught.value.reason == "render_limit_exceeded"
        assert time.monotonic() - started < 3
        assert await bystander == 0.8
        assert time.monotonic() - started > 2.3  # ran twice
        assert await pool.run(sleep, 0) == 0  # the replaced pool serves


async def test_the_pool_caps_a_worker_s_memory() -> None:
    async with RenderPool(workers=1, memory_limit=256 * 1024 * 1024) as pool:
        with pytest.raises(MemoryError):
            await pool.run(allocate, 1024 * 1024 * 1024)
        assert await pool.run(allocate, 1024) == 1024
