"""The Jinja2 sandbox the renderer runs in, with more limits than Jinja gives:
- no Python internals (underscore attributes), no callables but a short list of
  harmless `str`/`dict` methods, no globals but a bounded `range`;
- no macros, call/filter/set blocks, imports, includes, extends or recursive loops (the
  constructs that buffer output away from the size check, or recurse);
- sizes are *weights*: the characters and elements reachable from a value, every shared
  reference counted each time (`[[1] * 1000] * 1000` weighs about a million, as its
  text would), computed once per distinct container and given up past the limit. No
  value may weigh more than `MAX_VALUE_WEIGHT` (= `MAX_OUTPUT_CHARS`): `*` and `+` are
  refused *before* they compute a heavier result, and what a filter, a method call, `~`
  or a list/tuple/dict literal builds is checked as it is built. So no expression can
  build (or, through `str()`, print) more than about a megabyte of data;
- a render may allocate at most `MAX_RENDER_ALLOCATION` elements in total (the lengths
  of every string and container those operations build), so a loop cannot keep
  building megabyte values until its deadline;
- only plain values are printed or turned into text (`str`, numbers, `bool`, `None`,
  `Markup`, undefined values and lists/tuples/dicts of those): `{{ 'a'.format }}`,
  `{{ loop }}`, `{{ range(3) }}` or `{{ d.items() }}` (or such a value given to a text
  filter or `~`) fail the render with `render_failed` instead of showing a Python repr;
- loop iterations are counted and the wall clock is checked on every iteration, call
  and attribute access, against the `Budget` the caller sets in `BUDGET` (the caller
  also checks the output chunk by chunk);
- no constant folding at compile time (Jinja's optimizer would evaluate expressions
  outside any budget, and is slow on deeply nested ones).
"""

import functools
import itertools
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
# No value may weigh more than this (see the module docstring).
MAX_VALUE_WEIGHT: Final = MAX_OUTPUT_CHARS
# The elements and characters one render may build in total.
MAX_RENDER_ALLOCATION: Final = 8 * MAX_OUTPUT_CHARS
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
    allocated: int = 0

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise LimitExceeded("render_limit_exceeded")

    def iterate(self) -> None:
        self.iterations += 1
        if self.iterations > MAX_LOOP_ITERATIONS:
            raise LimitExceeded("render_limit_exceeded")
        self.tick()

    def allocate(self, size: int) -> None:
        self.allocated += size
        if self.allocated > MAX_RENDER_ALLOCATION:
            raise LimitExceeded("render_limit_exceeded")


BUDGET: ContextVar[Budget | None] = ContextVar("datamailer_template_budget", default=None)


def _tick() -> None:
    budget = BUDGET.get()
    if budget is not None:
        budget.tick()


class _TooHeavy(Exception):
    pass


# What may be printed or turned into text besides str/list/tuple/dict (see the docstring).
_PLAIN_SCALARS: Final = (int, float, type(None), Undefined)
_ATOMS: Final = frozenset({int, float, bool, type(None)})


def weight(value: Any, *, plain: bool = False) -> int:
    """Characters and elements reachable from `value` (strings count their length,
    containers their length plus their items' weights), capped at `MAX_VALUE_WEIGHT + 1`.
    Each distinct container is walked once, however often it is referenced, so this
    costs at most about `MAX_VALUE_WEIGHT` steps. With `plain`, a value that is not
    plain fails the render (`render_failed`)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list | tuple | dict):
        try:
            return _walk(value, {}, plain)
        except _TooHeavy:
            return MAX_VALUE_WEIGHT + 1
    if plain and not isinstance(value, _PLAIN_SCALARS):
        raise LimitExceeded("render_failed")
    return 0


def _walk(container: list[Any] | tuple[Any, ...] | dict[Any, Any], seen: dict[int, int], plain: bool) -> int:
    known = seen.get(id(container))
    if known is not None:
        return known
    total = len(container)
    parts = itertools.chain.from_iterable(container.items()) if isinstance(container, dict) else container
    for part in parts:
        kind = type(part)
        if kind in _ATOMS:
            continue
        if kind is str:
            total += len(part)
        elif isinstance(part, list | tuple | dict):
            total += _walk(part, seen, plain)
        else:
            total += weight(part, plain=plain)
        if total > MAX_VALUE_WEIGHT:
            raise _TooHeavy
    seen[id(container)] = total
    return total


def _check_weight(value: Any, *, plain: bool = False) -> int:
    measured = weight(value, plain=plain)
    if measured > MAX_VALUE_WEIGHT:
        raise LimitExceeded("output_too_large")
    return measured


def _allocate(size: int) -> None:
    budget = BUDGET.get()
    if budget is not None:
        budget.allocate(size)


def _check_size(value: Any) -> Any:
    """A value just built: not too heavy, and charged to the render's allocation."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS:
        raise LimitExceeded("render_limit_exceeded")
    if isinstance(value, str | list | tuple | dict):
        _check_weight(value)
        _allocate(len(value))
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse, before computing it, a result that would be too large."""
    if operator == "+" and weight(left) + weight(right) > MAX_VALUE_WEIGHT:
        raise LimitExceeded("output_too_large")
    if operator == "*":
        if _is_int(left) and _is_int(right):
            if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise LimitExceeded("render_limit_exceeded")
        elif isinstance(right, int) and weight(left) * max(right, 0) > MAX_VALUE_WEIGHT:
            raise LimitExceeded("output_too_large")
        elif isinstance(left, int) and weight(right) * max(left, 0) > MAX_VALUE_WEIGHT:
            raise LimitExceeded("output_too_large")
    if operator == "**" and _is_int(left) and _is_int(right) and right > 0:
        if left.bit_length() * right > MAX_INT_BITS:
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
        return _check_size(super().call_binop(context, operator, left, right))

    def getattr(self, obj: Any, attribute: str) -> Any:
        _tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _tick()
        return super().getitem(obj, argument)


# Filters.


def _checked(filter_: Callable[..., Any], *, stringifies: bool) -> Callable[..., Any]:
    """The filter with the clock checked before and the result size after; a filter
    that turns its value into text gets only plain values."""

    @functools.wraps(filter_)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _tick()
        if stringifies:
            _check_weight(args[1] if isinstance(args[0], EvalContext) else args[0], plain=True)
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
        total += _check_weight(item, plain=True)  # before str(), which could be far longer
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
    if sum(_check_weight(p, plain=True) for p in parts) > MAX_OUTPUT_CHARS:
        raise LimitExceeded("output_too_large")
    texts = [escape(p) if eval_ctx.autoescape else str(p) for p in parts]
    if sum(len(t) for t in texts) > MAX_OUTPUT_CHARS:
        raise LimitExceeded("output_too_large")
    return Markup("").join(texts) if eval_ctx.autoescape else "".join(texts)


def _built(value: Any) -> Any:
    """A list, tuple or dict literal, checked like any other built value."""
    return _check_size(value)


@pass_context  # needing the context keeps Jinja from printing constants at compile time
def _finalize(context: Context, value: Any) -> Any:
    """Every `{{ value }}`, before it becomes text: plain and not too heavy."""
    _check_weight(value, plain=True)
    return value


@pass_context  # also keeps Jinja from evaluating it at compile time
def _guard_loop(context: Context, iterable: Any) -> Iterator[Any]:
    budget = BUDGET.get()
    for item in iterable:
        if budget is not None:
            budget.iterate()
        yield item


_CONCAT_FILTER: Final = "_dm_concat"
_LOOP_FILTER: Final = "_dm_loop"
_BUILT_FILTER: Final = "_dm_built"
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
# Filters that do not turn their value into text (they may take any value).
_PASS_THROUGH: Final = frozenset({"count", "d", "default", "first", "join", "last", "length"})


def _environment(*, autoescape: bool) -> _Sandbox:
    env = _Sandbox(
        autoescape=autoescape,
        undefined=ChainableUndefined,
        keep_trailing_newline=True,
        optimized=False,
        finalize=_finalize,
    )
    env.globals.clear()
    env.globals["range"] = safe_range
    env.filters.clear()
    env.filters.update(
        {name: _checked(f, stringifies=name not in _PASS_THROUGH) for name, f in _FILTERS.items()}
    )
    env.filters[_CONCAT_FILTER] = _concat
    env.filters[_BUILT_FILTER] = _built
    env.filters[_LOOP_FILTER] = _guard_loop
    return env


HTML_ENV: Final = _environment(autoescape=True)
TEXT_ENV: Final = _environment(autoescape=False)


class Refused(Exception):
    """The template uses a construct the sandbox does not allow."""


class Harden(NodeTransformer):
    """Refuses the forbidden statements, counts loop iterations, checks concatenations
    and list, tuple and dict literals."""

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

    def _literal(self, node: nodes.List | nodes.Tuple | nodes.Dict) -> nodes.Node:
        self.generic_visit(node)
        if isinstance(node, nodes.Tuple) and node.ctx != "load":
            return node  # an assignment target (`{% for a, b in pairs %}`)
        return _filter(node, _BUILT_FILTER, node.lineno)

    visit_List = visit_Tuple = visit_Dict = _literal


def _filter(value: nodes.Node, name: str, lineno: int) -> nodes.Filter:
    return nodes.Filter(value, name, [], [], None, None, lineno=lineno)
