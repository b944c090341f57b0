r"""Math typeset when a feedback page is written: its TeX becomes MathML, which browsers draw without a script.

A student reads the feedback page offline, as one .html file (nbgrader's ``release_feedback`` sends nothing
else), so no script can typeset it in the browser. ``typeset`` does at export time what MathJax's tex2jax did
in the browser, on the same text: ``$...$``, ``$$...$$``, ``\(...\)``, ``\[...\]`` and
``\begin{env}...\end{env}`` in the page's text, never inside ``<pre>``, ``<code>``, ``<script>``, ``<style>``
or ``<textarea>`` (code and its outputs keep their dollar signs), ``\$`` standing for a dollar sign. The
markdown renderer (sanitize.py) has already kept math away from markdown (underscores are not emphasis there)
and written every literal dollar as ``\$``, so what is math here is what was math in the markdown.

Student TeX is hostile input: latex2mathml turns ``\href``, ``\style`` and ``\class`` into attributes and
copies ``\text{...}`` into the markup unescaped. So its element tree is written out here with every text
escaped, then cleaned by ``sanitize.clean_mathml``'s allow-list. An expression latex2mathml cannot convert
faithfully (a syntax error, an unknown command or environment) stays on the page as its TeX source, in
``<code>``.
"""

from __future__ import annotations

import functools
import html
import re
from html.parser import HTMLParser

from latex2mathml import commands as latex_commands
from latex2mathml.converter import convert_to_element

from .sanitize import clean_mathml

#: Elements whose text is never math (MathJax 2's skipTags, and MathML already there).
SKIP_TAGS = frozenset(
    {"script", "noscript", "style", "textarea", "pre", "code", "annotation", "annotation-xml", "math"}
)
#: ``\$`` first (a dollar sign, never a delimiter), then display before inline, as MathJax scans.
_MATH = re.compile(
    r"(?P<dollar>\\\$)"
    r"|\$\$(?P<display>.+?)\$\$"
    r"|\\\[(?P<display_latex>.+?)\\\]"
    r"|\\\((?P<inline_latex>.+?)\\\)"
    r"|(?P<environment>\\begin\{(?P<name>[A-Za-z]+\*?)\}.*?\\end\{(?P=name)\})"
    r"|\$(?P<inline>(?:\\.|[^\\$])+?)\$",
    re.DOTALL,
)
#: The environments latex2mathml lays out; it drops the ``\begin`` of any other and keeps its ``&`` as text.
ENVIRONMENTS = frozenset(name.lstrip("\\") for name in latex_commands.MATRICES)
_ENVIRONMENT = re.compile(r"\\begin\s*\{([^}]*)\}")
#: latex2mathml copies ``\text{...}`` verbatim: these escapes are the characters TeX prints for them.
_TEXT_ESCAPE = re.compile(r"\\([%_$&#{} ])")
_COMMAND = re.compile(r"\\[A-Za-z]")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]*")


def typeset(page: str) -> str:
    """``page`` (HTML) with the math of its text as MathML, and each ``\\$`` there a dollar sign."""
    runs = _text_runs(page)
    if not runs:
        return page
    pieces, done = [], 0
    for start, end in runs:
        pieces += [page[done:start], _MATH.sub(_replacement, page[start:end])]
        done = end
    pieces.append(page[done:])
    return "".join(pieces)


def _replacement(match: re.Match) -> str:
    if match["dollar"]:
        return "$"
    if match["environment"]:
        tex, display = match["environment"], True
    else:
        display = match["display"] is not None or match["display_latex"] is not None
        tex = next(match[name] for name in ("display", "display_latex", "inline_latex", "inline") if match[name])
    mathml = to_mathml(html.unescape(tex), display)
    # The raw text is HTML already (escaped where it must be): kept as it is, it is the TeX the author wrote.
    return mathml if mathml is not None else f"<code>{match[0]}</code>"


@functools.lru_cache(maxsize=4096)  # a release's own expressions recur on every student's page
def to_mathml(tex: str, display: bool = False) -> str | None:
    """MathML for TeX ``tex`` (a ``display`` block, else inline), cleaned; None if latex2mathml cannot
    convert it faithfully."""
    if any(name.strip() not in ENVIRONMENTS for name in _ENVIRONMENT.findall(tex)):
        return None
    try:
        tree = convert_to_element(tex, display="block" if display else "inline")
    except Exception:  # latex2mathml's errors (and its bugs) on what it cannot parse: the source stays shown
        return None
    for element in tree.iter():
        text = html.unescape(element.text or "")
        if element.tag == "mi" and (text.startswith("\\") or text == "&"):  # an unknown command, a stray &
            return None
        if element.tag == "mtext":
            element.text = _TEXT_ESCAPE.sub(r"\1", element.text or "")
            if _COMMAND.search(element.text):  # a command inside \text{}, which latex2mathml does not run
                return None
        if not _NAME.fullmatch(element.tag):
            return None
    return clean_mathml(_markup(tree))


def _markup(element) -> str:
    """The tree as HTML, every text and attribute value escaped (latex2mathml's own output escapes neither)."""
    attributes = "".join(
        f' {name}="{html.escape(html.unescape(value))}"'
        for name, value in element.attrib.items()
        if _NAME.fullmatch(name)
    )
    inner = _escaped(element.text) + "".join(_markup(child) + _escaped(child.tail) for child in element)
    return f"<{element.tag}{attributes}>{inner}</{element.tag}>"


def _escaped(text: str | None) -> str:
    # latex2mathml writes symbols as character references (&#x0003D;): the character itself, escaped.
    return html.escape(html.unescape(text or ""), quote=False)


def _text_runs(page: str) -> list[tuple[int, int]]:
    """(start, end) offsets of the runs of text in ``page`` that math may be in."""
    scanner = _Scanner(page)
    runs: list[tuple[int, int]] = []
    events = scanner.events + [(len(page), False)]
    for (offset, is_text), (following, _) in zip(events, events[1:], strict=False):
        if not is_text or following <= offset:
            continue
        if runs and runs[-1][1] == offset:  # one run that the parser reported in pieces
            runs[-1] = (runs[-1][0], following)
        else:
            runs.append((offset, following))
    return runs


class _Scanner(HTMLParser):
    """Where each piece of ``page`` starts, and whether it is text outside ``SKIP_TAGS``."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.events: list[tuple[int, bool]] = []
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", page)]
        self._open_skips: list[str] = []
        self.feed(page)
        self.close()

    def _event(self, is_text: bool) -> None:
        line, column = self.getpos()
        self.events.append((self._line_starts[line - 1] + column, is_text and not self._open_skips))

    def handle_starttag(self, tag, attrs):
        self._event(False)
        if tag in SKIP_TAGS:
            self._open_skips.append(tag)

    def handle_startendtag(self, tag, attrs):
        self._event(False)

    def handle_endtag(self, tag):
        self._event(False)
        if tag in self._open_skips:
            del self._open_skips[len(self._open_skips) - 1 - self._open_skips[::-1].index(tag) :]

    def handle_data(self, data):
        self._event(True)

    def handle_comment(self, data):
        self._event(False)

    def handle_decl(self, decl):
        self._event(False)

    def handle_pi(self, data):
        self._event(False)

    def unknown_decl(self, data):
        self._event(False)
