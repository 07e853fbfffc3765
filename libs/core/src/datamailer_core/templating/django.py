"""Django template syntax to its Jinja equivalent, applied before parsing: `|name:arg`
filter arguments become `|name(arg)`, `{% empty %}` becomes `{% else %}` and
`forloop.counter` (and friends) become `loop.index`. Only the inside of `{{ }}` and
`{% %}` is touched, string literals are left alone, and `{% raw %}` blocks are kept."""

import re

_TAG_OPEN = re.compile(r"\{\{|\{%|\{#")
_EXPR_TOKEN = re.compile(
    r"""(?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*')"""
    r"""|(?P<filter>\|\s*(?P<name>[A-Za-z_]\w*)\s*:)"""
    r"""|(?P<other>[^"'|]+|.)""",
    re.S,
)
_FILTER_ARG = re.compile(r"\s*(-?\d+(?:\.\d+)?|[A-Za-z_]\w*(?:\.\w+)*)")
_FORLOOP = re.compile(r"\bforloop\.(counter0|counter|revcounter0|revcounter|first|last)\b")
_FORLOOP_NAMES = {
    "counter": "index",
    "counter0": "index0",
    "revcounter": "revindex",
    "revcounter0": "revindex0",
    "first": "first",
    "last": "last",
}
_RAW_END = re.compile(r"\{%-?\s*endraw\s*-?%\}")


def _rewrite_expression(inner: str) -> str:
    """`x|default:"a"` → `x|default("a")`, `forloop.counter` → `loop.index`; string
    literals are left untouched."""
    out: list[str] = []
    tokens = list(_EXPR_TOKEN.finditer(inner))
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token.group("string") is not None:
            out.append(token.group())
        elif token.group("filter") is not None:
            following = tokens[i + 1] if i + 1 < len(tokens) else None
            head = f"|{token.group('name')}("
            if following is not None and following.group("string") is not None:
                out.append(f"{head}{following.group()})")
                i += 1
            elif following is not None and (arg := _FILTER_ARG.match(following.group())):
                rest = following.group()[arg.end() :]
                out.append(f"{head}{_FORLOOP.sub(_loop_name, arg.group(1))}){_FORLOOP.sub(_loop_name, rest)}")
                i += 1
            else:
                out.append(token.group())  # not Django syntax either: compiling will say so
        else:
            out.append(_FORLOOP.sub(_loop_name, token.group()))
        i += 1
    return "".join(out)


def _loop_name(match: re.Match[str]) -> str:
    return f"loop.{_FORLOOP_NAMES[match.group(1)]}"


def _region_end(source: str, start: int, closer: str) -> int:
    """Index of `closer` after `start`, skipping string literals; -1 when unclosed."""
    i, quote = start, ""
    while i < len(source):
        ch = source[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif source.startswith(closer, i):
            return i
        i += 1
    return -1


def translate_django(source: str) -> str:
    """Django template syntax to the Jinja equivalent, only inside `{{ }}` and `{% %}`."""
    out: list[str] = []
    i = 0
    while (opened := _TAG_OPEN.search(source, i)) is not None:
        out.append(source[i : opened.start()])
        opener = opened.group()
        closer = {"{{": "}}", "{%": "%}", "{#": "#}"}[opener]
        end = (
            source.find(closer, opened.end()) if opener == "{#" else _region_end(source, opened.end(), closer)
        )
        if end < 0:
            break
        inner = source[opened.end() : end]
        word = inner.strip(" \t\r\n-+")
        if opener == "{#":
            out.append(source[opened.start() : end + 2])
        elif opener == "{%" and word == "raw":
            raw_end = _RAW_END.search(source, end)
            stop = raw_end.end() if raw_end else len(source)
            out.append(source[opened.start() : stop])
            i = stop
            continue
        elif opener == "{%" and word == "empty":
            out.append(opener + inner.replace("empty", "else", 1) + closer)
        else:
            out.append(opener + _rewrite_expression(inner) + closer)
        i = end + 2
    out.append(source[i:])
    return "".join(out)
