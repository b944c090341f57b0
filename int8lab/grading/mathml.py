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

The page's big pieces are typeset once per process: the feedback exporter marks each markdown cell's HTML, each
comment and each highlighted code cell (``fragment``), and ``typeset`` reads the rest of the page (its skeleton)
with each piece replaced by a placeholder. A piece is read alone and remembered by its text when reading it alone
is reading it in the page: it leaves the parser as it found it (no open ``<pre>`` nor ``<script>``, no tag cut
off), it stands where the skeleton has no skipped element open and only whitespace beside it, and the page's
budget of expressions outlasts it. Otherwise the whole page, its marks removed, is read as one, as before.
"""

from __future__ import annotations

import collections
import functools
import html
import re
import secrets
import threading
from html.parser import HTMLParser

from latex2mathml import commands as latex_commands
from latex2mathml.converter import convert_to_element

from . import fragments
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


#: The marks around a fragment, and the placeholder of one in the skeleton: HTML comments with a secret of the
#: process, which no submission can write (bleach strips its comments anyway), and which leave no page.
_SECRET = secrets.token_hex(16)
_START, _END = f"<!--math {_SECRET}-->", f"<!--/math {_SECRET}-->"
_SLOT = f"<!--slot {_SECRET}-->"
#: Fragments longer than this (an answer with pasted images) are read alone but not remembered; and the
#: fragments remembered hold this many characters at most (the least recently used go first). A release's
#: fragments are some 0.5 million characters; a student's own answers, which never recur, push each other out.
MAX_REMEMBERED = 100_000
MAX_REMEMBERED_TOTAL = 8_000_000
#: Code as Pygments highlights it: a <div>, and in its <pre> only <span>s and text without < or >. All its text is
#: in the <pre>, so no math, and it leaves the parser as it found it: a student's code need not be parsed.
_HIGHLIGHTED = re.compile(
    r'<div class="[^"<>&]*+"><pre>(?:[^<>]++|<span(?: class="[^"<>&]*+")?>|</span>)*+</pre></div>\s*+'
)


def fragment(piece: str) -> str:
    """``piece`` (HTML that the page holds as it is) marked for ``typeset`` to read alone and remember."""
    return f"{_START}{piece}{_END}"


def unmarked(page: str) -> str:
    """``page`` without the marks of ``fragment``."""
    return page.replace(_START, "").replace(_END, "")


def typeset(page: str) -> str:
    """``page`` (HTML) with the math of its text as MathML, and each ``\\$`` there a dollar sign."""
    if _START in page or _END in page:
        typeset_page = _typeset_marked(page)
        if typeset_page is not None:
            return typeset_page
        page = unmarked(page)
    return _typeset_runs(page, _text_runs(page), [MAX_EXPRESSIONS])


def _typeset_marked(page: str) -> str | None:
    """``page`` typeset with its fragments read alone, as ``typeset`` would read them in the page; None where that
    cannot be shown (marks out of order, a fragment that changes what follows it), for the page to be read whole."""
    skeleton, fragments, done = [], [], 0
    start, end = page.find(_START), page.find(_END)
    while start >= 0:
        following = page.find(_START, start + len(_START))
        if not start < end or 0 <= following < end:  # an end mark before its start, or one start inside another
            return None
        skeleton += [page[done:start], _SLOT]
        fragments.append(page[start + len(_START) : end])
        done = end + len(_END)
        start, end = following, page.find(_END, done)
    if end >= 0:
        return None
    skeleton.append(page[done:])
    skeleton_page = "".join(skeleton)
    scanner = _Scanner(skeleton_page, slot=_SLOT)
    runs = scanner.text_runs()
    slots = scanner.slots  # (offset, whether no skipped element is open there)
    if len(slots) != len(fragments) or not all(open_ok for _, open_ok in slots):
        return None
    run_ends = {end: start for start, end in runs}
    run_starts = {start: end for start, end in runs}
    for offset, _ in slots:  # whitespace beside a fragment: its text runs are typeset as if they were one with it
        before, after = run_ends.get(offset), run_starts.get(offset + len(_SLOT))
        if before is not None and not skeleton_page[before:offset].isspace():
            return None
        if after is not None and not skeleton_page[offset + len(_SLOT) : after].isspace():
            return None
    budget = [MAX_EXPRESSIONS]
    items = sorted(
        [(start, end, None) for start, end in runs]
        + [(offset, offset + len(_SLOT), i) for i, (offset, _) in enumerate(slots)]
    )
    pieces, done = [], 0
    for start, end, index in items:
        pieces.append(skeleton_page[done:start])
        if index is None:
            pieces.append(_typeset_text(skeleton_page[start:end], budget))
        else:
            typeset_fragment = _typeset_fragment(fragments[index], budget)
            if typeset_fragment is None:
                return None
            pieces.append(typeset_fragment)
        done = end
    pieces.append(skeleton_page[done:])
    return "".join(pieces)


def _typeset_fragment(piece: str, budget: list[int]) -> str | None:
    """``piece`` typeset alone with what is left of ``budget``, remembered when the budget outlasts it; None if
    reading it alone is not reading it in the page."""
    remembered = _remembered(piece, MAX_TEX, MAX_EXPRESSIONS) if len(piece) <= MAX_REMEMBERED else None
    if remembered is not None:
        neutral, typeset_piece, used = remembered
        if not neutral:
            return None
        if used < budget[0]:  # the budget never ran out in it, nor does it now: the same text
            budget[0] -= used
            return typeset_piece
    runs = _fragment_runs(piece)
    return None if runs is None else _typeset_runs(piece, runs, budget)


_REMEMBERED: collections.OrderedDict[tuple[str, int, int], tuple[bool, str, int]] = collections.OrderedDict()
_REMEMBERED_LOCK = threading.Lock()  # a Dask worker may write pages in several threads
_remembered_total = 0


def _remembered(piece: str, max_tex: int, max_expressions: int) -> tuple[bool, str, int]:
    """(whether ``piece`` reads alone as in a page, its typeset text, the expressions it used) with a whole
    budget, remembered (``MAX_REMEMBERED_TOTAL``); ``max_tex`` and ``max_expressions`` key the module's limits."""
    key = (piece, max_tex, max_expressions)
    with _REMEMBERED_LOCK:
        if key in _REMEMBERED:
            _REMEMBERED.move_to_end(key)
            return _REMEMBERED[key]
    runs = _fragment_runs(piece)
    if runs is None:
        value = (False, "", 0)
    else:
        budget = [max_expressions]
        typeset_piece = _typeset_runs(piece, runs, budget)
        value = (True, typeset_piece, max_expressions - budget[0])
    remember(key, value)
    fragments.computed("math", list(key), list(value))
    return value


def remember(key: tuple[str, int, int], value: tuple[bool, str, int]) -> None:
    """``_remembered(*key)`` is ``value`` (this process's, or one that ``fragments`` kept)."""
    global _remembered_total
    with _REMEMBERED_LOCK:
        # One piece whose MathML alone would fill a tenth of the memory is not kept: it would push out every other.
        if key not in _REMEMBERED and len(key[0]) + len(value[1]) <= MAX_REMEMBERED_TOTAL // 10:
            _REMEMBERED[key] = value
            _remembered_total += len(key[0]) + len(value[1])
        while _remembered_total > MAX_REMEMBERED_TOTAL:
            (old_piece, _, _), (_, old_typeset, _) = _REMEMBERED.popitem(last=False)
            _remembered_total -= len(old_piece) + len(old_typeset)


def forget() -> None:
    """Forget the fragments remembered (``_remembered``); latex2mathml's results (``to_mathml``) stay."""
    global _remembered_total
    with _REMEMBERED_LOCK:
        _REMEMBERED.clear()
        _remembered_total = 0


def _typeset_runs(piece: str, runs: list[tuple[int, int]], budget: list[int]) -> str:
    """``piece`` (HTML) with the math of its text ``runs`` typeset while ``budget[0]`` lasts."""
    pieces, done = [], 0
    for start, end in runs:
        pieces += [piece[done:start], _typeset_text(piece[start:end], budget)]
        done = end
    pieces.append(piece[done:])
    return "".join(pieces)


def _fragment_runs(piece: str) -> list[tuple[int, int]] | None:
    """The text runs of ``piece`` read alone, if it leaves the parser as it found it (nothing skipped open, no
    script or style, no tag or comment cut off at its end); else None."""
    if _HIGHLIGHTED.fullmatch(piece):
        return []
    scanner = _Scanner(piece, close=False)
    # (A script or style left open is an open skipped element already; its CDATA mode is checked all the same.)
    if scanner.cdata_elem is not None or scanner._open_skips or "<" in scanner.rawdata:
        return None
    scanner.close()
    return scanner.text_runs()


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
    return _Scanner(page).text_runs()


class _Scanner(HTMLParser):
    """Where each piece of ``page`` starts, and whether it is text outside ``SKIP_TAGS``; with ``slot``, where
    each comment ``slot`` is and whether no element of ``SKIP_TAGS`` is open there. ``close=False`` leaves the
    parser open at the end of ``page`` (what it could not read yet in ``rawdata``)."""

    def __init__(self, page: str, slot: str | None = None, close: bool = True):
        super().__init__(convert_charrefs=True)
        self.events: list[tuple[int, bool]] = []
        self.slots: list[tuple[int, bool]] = []
        self._length = len(page)
        self._slot = None if slot is None else slot[len("<!--") : -len("-->")]
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", page)]
        self._open_skips: list[str] = []
        self.feed(page)
        if close:
            self.close()

    def text_runs(self) -> list[tuple[int, int]]:
        """(start, end) offsets of the runs of text outside ``SKIP_TAGS``."""
        runs: list[tuple[int, int]] = []
        events = self.events + [(self._length, False)]
        for (offset, is_text), (following, _) in zip(events, events[1:], strict=False):
            if not is_text or following <= offset:
                continue
            if runs and runs[-1][1] == offset:  # one run that the parser reported in pieces
                runs[-1] = (runs[-1][0], following)
            else:
                runs.append((offset, following))
        return runs

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
        if data == self._slot:
            self.slots.append((self.events[-1][0], not self._open_skips))

    def handle_decl(self, decl):
        self._event(False)

    def handle_pi(self, data):
        self._event(False)

    def unknown_decl(self, data):
        self._event(False)
