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
#: Where math may open: ``\$`` first (a dollar sign, never a delimiter), then display before inline, as MathJax
#: scans. A closer searched for in vain is not searched for again (``_typeset_text``): a page of openers
#: without closers costs time in proportion to its length, not to its square.
_OPENER = re.compile(r"\\\$|\$\$|\\\[|\\\(|\\begin\{([A-Za-z]+\*?)\}|\$")
_CLOSERS = {"$$": "$$", "\\[": "\\]", "\\(": "\\)"}
#: The rest of an inline ``$...$``: escaped characters and anything but a dollar, then the closing dollar.
_INLINE_REST = re.compile(r"(?:\\.|[^\\$])+\$", re.DOTALL)
#: Longer expressions, and expressions past this many on one page, stay as TeX source: a student's page cannot
#: make the grader convert without end. A release notebook has about a hundred, each a line or two long.
MAX_TEX = 4000
MAX_EXPRESSIONS = 3000
#: The environments latex2mathml lays out; it drops the ``\begin`` of any other and keeps its ``&`` as text.
ENVIRONMENTS = frozenset(name.lstrip("\\") for name in latex_commands.MATRICES)
_ENVIRONMENT = re.compile(r"\\begin\s*\{([^}]*)\}")
#: latex2mathml copies ``\text{...}`` verbatim: these escapes are the characters TeX prints for them.
_TEXT_ESCAPE = re.compile(r"\\([%_$&#{} ])")
_COMMAND = re.compile(r"\\[A-Za-z]")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]*")


def typeset(page: str) -> str:
    """``page`` (HTML) with the math of its text as MathML, and each ``\\$`` there a dollar sign."""
    budget = [MAX_EXPRESSIONS]
    pieces, done = [], 0
    for start, end in _text_runs(page):
        pieces += [page[done:start], _typeset_text(page[start:end], budget)]
        done = end
    pieces.append(page[done:])
    return "".join(pieces)


def _typeset_text(text: str, budget: list[int]) -> str:
    """One run of the page's text (raw HTML: entities escaped), its math typeset while ``budget[0]`` lasts."""
    pieces, done, position = [], 0, 0
    unclosed: set[str] = set()  # closers already searched for to the end of the run, in vain
    while budget[0] > 0 and (opener := _OPENER.search(text, position)):
        first = opener[0]
        if first == "\\$":
            pieces += [text[done : opener.start()], "$"]
            done = position = opener.end()
            continue
        closer = _CLOSERS.get(first, "$") if opener[1] is None else f"\\end{{{opener[1]}}}"
        end = NO_CLOSER if closer in unclosed else _closing(text, opener, closer)
        if end < 0:
            if end == NO_CLOSER:
                unclosed.add(closer)
            position = opener.end()
            continue
        if opener[1] is not None:  # an environment is converted whole, \begin and \end included
            tex, display = text[opener.start() : end], True
        else:
            tex, display = text[opener.end() : end - len(closer)], first in ("$$", "\\[")
        budget[0] -= 1
        mathml = to_mathml(html.unescape(tex), display) if len(tex) <= MAX_TEX else None
        # The raw text is HTML already (escaped where it must be): kept as it is, it is the TeX the author wrote.
        source = text[opener.start() : end]
        pieces += [text[done : opener.start()], mathml if mathml is not None else f"<code>{source}</code>"]
        done = position = end
    pieces.append(text[done:])
    return "".join(pieces)


NO_CLOSER, NOTHING_BETWEEN = -1, -2


def _closing(text: str, opener: re.Match, closer: str) -> int:
    """Where the math that ``opener`` opens ends (after its closer), else ``NO_CLOSER`` or ``NOTHING_BETWEEN``."""
    if closer == "$":
        rest = _INLINE_REST.match(text, opener.end())
        if rest is None:
            return NOTHING_BETWEEN if text.startswith("$", opener.end()) else NO_CLOSER
        return rest.end()
    found = text.find(closer, opener.end())
    if found < 0:
        return NO_CLOSER
    return NOTHING_BETWEEN if found == opener.end() and opener[1] is None else found + len(closer)


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
