"""The Jinja2 sandbox the renderer runs in, with more limits than Jinja gives:
- no Python internals (underscore attributes), no callables but a short list of
  harmless `str`/`dict` methods, no globals but a bounded `range`;
- no macros, call/filter/set blocks, imports, includes, extends or recursive loops (the
  constructs that buffer output away from the size check, or recurse);
- every value built by `+`, `*`, `**`, `~` or a filter is size-checked (the caller also
  checks the output chunk by chunk);
- loop iterations are counted and the wall clock is checked on every iteration, call
  and attribute access, against the `Budget` the caller sets in `BUDGET`;
- no constant folding at compile time (Jinja's optimizer would evaluate expressions
  outside any budget, and is slow on deeply nested ones).
"""

import functools
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any, Final

from jinja2 import ChainableUndefined, nodes, pass_context, pass_eval_context
from jinja2.filters import FILTERS as JINJA_FILTERS
from jinja2.nodes import EvalContext
from jinja2.runtime import Context, LoopContext, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment, safe_range
from jinja2.visitor import NodeTransformer
from markupsafe import Markup, escape

MAX_SOURCE_BYTES: Final = 100 * 1024
MAX_OUTPUT_CHARS: Final = 1024 * 1024
MAX_LOOP_ITERATIONS: Final = 200_000
RENDER_TIMEOUT_SECONDS: Final = 1.0
# Integers stay below this many bits (a chain of squarings would otherwise grow forever).
MAX_INT_BITS: Final = 4096

# Statements that are refused at compile time (see the module docstring).
_FORBIDDEN_NODES: Final = (
    nodes.Macro,
    nodes.CallBlock,
    nodes.FilterBlock,
    nodes.AssignBlock,
    nodes.Import,
    nodes.FromImport,
    nodes.Include,
    nodes.Extends,
)
_SAFE_METHODS: Final = {
    str: frozenset(
        {
            "capitalize",
            "count",
            "endswith",
            "find",
            "isalnum",
            "isalpha",
            "isdigit",
            "islower",
            "isspace",
            "isupper",
            "lower",
            "lstrip",
            "rfind",
            "rsplit",
            "rstrip",
            "split",
            "splitlines",
            "startswith",
            "strip",
            "title",
            "upper",
        }
    ),
    dict: frozenset({"get", "items", "keys", "values"}),
    list: frozenset({"count", "index"}),
    tuple: frozenset({"count", "index"}),
    LoopContext: frozenset({"changed", "cycle"}),
}


class LimitExceeded(Exception):
    """A bound was hit while rendering; `reason` is the `TemplateError` reason."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass
class Budget:
    deadline: float
    iterations: int = 0

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise LimitExceeded("render_limit_exceeded")

    def iterate(self) -> None:
        self.iterations += 1
        if self.iterations > MAX_LOOP_ITERATIONS:
            raise LimitExceeded("render_limit_exceeded")
        self.tick()


BUDGET: ContextVar[Budget | None] = ContextVar("datamailer_template_budget", default=None)


def _tick() -> None:
    budget = BUDGET.get()
    if budget is not None:
        budget.tick()


def _check_size(value: Any) -> Any:
    if isinstance(value, str | list | tuple | dict) and len(value) > MAX_OUTPUT_CHARS:
        raise LimitExceeded("output_too_large")
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS:
        raise LimitExceeded("render_limit_exceeded")
    return value


def _size(value: Any) -> int:
    return len(value) if isinstance(value, str | list | tuple) else 0


def _check_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse, before computing it, a result that would be too large."""
    ints = (
        isinstance(left, int) and not isinstance(left, bool),
        isinstance(right, int) and not isinstance(right, bool),
    )
    if operator == "+" and _size(left) + _size(right) > MAX_OUTPUT_CHARS:
        raise LimitExceeded("output_too_large")
    if operator == "*":
        if all(ints):
            if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise LimitExceeded("render_limit_exceeded")
        elif ints[1] and _size(left) * max(right, 0) > MAX_OUTPUT_CHARS:
            raise LimitExceeded("output_too_large")
        elif ints[0] and _size(right) * max(left, 0) > MAX_OUTPUT_CHARS:
            raise LimitExceeded("output_too_large")
    if operator == "**" and all(ints) and right > 0 and left.bit_length() * right > MAX_INT_BITS:
        raise LimitExceeded("render_limit_exceeded")
    if operator == "%" and isinstance(left, str):
        # printf-style widths allocate before any check could run.
        raise LimitExceeded("render_failed")


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def is_safe_callable(self, obj: Any) -> bool:
        if obj is safe_range:
            return True
        owner = getattr(obj, "__self__", None)
        name = getattr(obj, "__name__", "")
        return any(isinstance(owner, kind) and name in names for kind, names in _SAFE_METHODS.items())

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _tick()
        return _check_size(super().call(context, obj, *args, **kwargs))

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _tick()
        _check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def getattr(self, obj: Any, attribute: str) -> Any:
        _tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _tick()
        return super().getitem(obj, argument)


# Filters.


def _checked(filter_: Callable[..., Any]) -> Callable[..., Any]:
    """The filter with the clock checked before and the result size after."""

    @functools.wraps(filter_)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _tick()
        return _check_size(filter_(*args, **kwargs))

    return wrapper


def _default(value: Any, default_value: Any = "", boolean: bool = True) -> Any:
    # Django semantics: any false value (not only an undefined one) takes the default.
    if isinstance(value, Undefined) or (boolean and not value):
        return default_value
    return value


@pass_eval_context
def _linebreaksbr(eval_ctx: EvalContext, value: Any) -> Any:
    text = str(value).replace("\r\n", "\n").replace("\r", "\n")
    if eval_ctx.autoescape:
        return Markup(str(escape(value if isinstance(value, Markup) else text)).replace("\n", "<br>"))
    return text.replace("\n", "<br>")


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def _striptags(value: Any) -> str:
    """Tags removed, whitespace kept (Django's behaviour, unlike Jinja's, which joins
    lines); entities are decoded, so the text reads the same in a text body and is
    escaped again in an HTML body."""
    parser = _TextExtractor()
    parser.feed(str(value))
    parser.close()
    return "".join(parser.parts)


def _capfirst(value: Any) -> str:
    text = str(value)
    return text[:1].upper() + text[1:]


def _truncatechars(value: Any, length: int) -> str:
    text = str(value)
    return text if len(text) <= length else text[: max(length - 1, 0)] + "…"


@pass_eval_context
def _join(eval_ctx: EvalContext, value: Iterable[Any], separator: str = "") -> Any:
    items: list[Any] = []
    total = 0
    for item in value:
        total += len(str(item)) + len(separator)
        if total > MAX_OUTPUT_CHARS:
            raise LimitExceeded("output_too_large")
        items.append(item)
    if eval_ctx.autoescape:
        return escape(separator).join(escape(item) for item in items)
    return separator.join(str(item) for item in items)


@pass_eval_context
def _concat(eval_ctx: EvalContext, parts: Sequence[Any]) -> Any:
    """`a ~ b`, size-checked (Jinja's own concatenation bypasses the sandbox)."""
    texts = [escape(p) if eval_ctx.autoescape else str(p) for p in parts]
    if sum(len(t) for t in texts) > MAX_OUTPUT_CHARS:
        raise LimitExceeded("output_too_large")
    return Markup("").join(texts) if eval_ctx.autoescape else "".join(texts)


@pass_context  # also keeps Jinja from evaluating it at compile time
def _guard_loop(context: Context, iterable: Any) -> Iterator[Any]:
    budget = BUDGET.get()
    for item in iterable:
        if budget is not None:
            budget.iterate()
        yield item


_CONCAT_FILTER: Final = "_dm_concat"
_LOOP_FILTER: Final = "_dm_loop"
_FILTERS: Final[dict[str, Callable[..., Any]]] = {
    **{
        name: JINJA_FILTERS[name]
        for name in (
            "abs",
            "capitalize",
            "count",
            "e",
            "escape",
            "first",
            "float",
            "int",
            "last",
            "length",
            "lower",
            "round",
            "safe",
            "string",
            "title",
            "trim",
            "upper",
            "urlencode",
        )
    },
    "default": _default,
    "d": _default,
    "linebreaksbr": _linebreaksbr,
    "striptags": _striptags,
    "capfirst": _capfirst,
    "truncatechars": _truncatechars,
    "join": _join,
}


def _environment(*, autoescape: bool) -> _Sandbox:
    env = _Sandbox(
        autoescape=autoescape, undefined=ChainableUndefined, keep_trailing_newline=True, optimized=False
    )
    env.globals.clear()
    env.globals["range"] = safe_range
    env.filters.clear()
    env.filters.update({name: _checked(f) for name, f in _FILTERS.items()})
    env.filters[_CONCAT_FILTER] = _concat
    env.filters[_LOOP_FILTER] = _guard_loop
    return env


HTML_ENV: Final = _environment(autoescape=True)
TEXT_ENV: Final = _environment(autoescape=False)


class Refused(Exception):
    """The template uses a construct the sandbox does not allow."""


class Harden(NodeTransformer):
    """Refuses the forbidden statements, counts loop iterations, checks concatenations."""

    def generic_visit(self, node: nodes.Node, *args: Any, **kwargs: Any) -> nodes.Node:
        if isinstance(node, _FORBIDDEN_NODES):
            raise Refused(f"{type(node).__name__} is not allowed")
        result: nodes.Node = super().generic_visit(node, *args, **kwargs)
        return result

    def visit_For(self, node: nodes.For) -> nodes.Node:
        if node.recursive:
            raise Refused("recursive loops are not allowed")
        self.generic_visit(node)
        node.iter = _filter(node.iter, _LOOP_FILTER, node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _filter(nodes.List(node.nodes, lineno=node.lineno), _CONCAT_FILTER, node.lineno)


def _filter(value: nodes.Node, name: str, lineno: int) -> nodes.Filter:
    return nodes.Filter(value, name, [], [], None, None, lineno=lineno)
