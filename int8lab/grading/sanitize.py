"""Sanitize what an instructor's browser renders of a submission, with bleach (as nbconvert's sanitizer does).

Applied to every notebook OUT keeps (formgrader shows it, the feedback page is made from it):
markdown cells are rendered to HTML first (so that a markdown link such as
``[x](javascript:...)`` is cleaned like an HTML one), then they, raw cells and HTML/markdown
outputs are cleaned to a list of harmless tags and http/https/mailto links, and
outputs of any other type than plain text, PNG/JPEG images, LaTeX and JSON are dropped
(JavaScript, SVG, widgets). Scripts, event handlers and ``javascript:`` URLs do not survive;
plots (PNG) and tables (``<table>``) do, and so do the PNG/JPEG images pasted into a markdown
answer (its attachments), embedded in the page as ``data:`` images.

The page is the grader's, not the student's: student markup keeps no ``id``, ``style`` or class
of the page's own CSS (a fake score pinned by Bootstrap's ``navbar-fixed-top``, an output hidden
by ``.hidden``), and no metadata that hides a cell's source survives.

Math stays TeX text here. The feedback page turns it into MathML when it is written (mathml.py), and that
MathML is cleaned by an allow-list of its own (``clean_mathml``): presentation elements with layout
attributes, no HTML element inside. MathML that a student types as markup is not math to this sanitizer:
it is stripped with the rest.
"""

from __future__ import annotations

import re

import bleach
from mistune.renderers.html import HTMLRenderer
from nbconvert.filters.markdown_mistune import IPythonRenderer, MarkdownWithMath
from nbconvert.preprocessors.sanitize import SanitizeHTML
from pygments.token import STANDARD_TYPES

from . import fragments

TAGS = [
    "a", "abbr", "b", "blockquote", "br", "code", "div", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i",
    "img", "li", "ol", "p", "pre", "span", "strong", "sub", "sup", "table", "tbody", "td", "tfoot", "th",
    "thead", "tr", "ul",
]  # fmt: skip
ATTRIBUTES = {
    "a": ["href", "title"],
    "abbr": ["title"],
    "img": ["src", "alt"],
    "table": ["class", "border"],
    "td": ["colspan", "rowspan"],
    "th": ["colspan", "rowspan"],
    "div": ["class"],
    "span": ["class"],
}
#: The classes nbconvert's own rendering puts on markup: code highlighting (Pygments) and pandas tables.
CLASSES = {
    "div": {"highlight"},
    "span": {name for name in STANDARD_TYPES.values() if name},
    "table": {"dataframe"},
}
SAFE_ATTACHMENTS = ("image/png", "image/jpeg")
#: bleach checks every URL against one list: ``data:`` is there for images only (``allowed_attribute``).
PROTOCOLS = ["http", "https", "mailto", "data"]
_IMAGE = re.compile(r"data:image/(?:png|jpeg);base64,[A-Za-z0-9+/]+={0,2}")
_LINK = re.compile(r"(?:https?:|mailto:|#)", re.IGNORECASE)
ATTACHMENT = "attachment:"
#: Cell metadata that tells a renderer to hide a cell's source (or the whole cell, or its output).
HIDING_KEYS = ("hide_input", "hide_output", "collapsed")
HIDING_TAGS = {
    f"{verb}{sep}{part}" for verb in ("hide", "remove") for sep in "-_" for part in ("input", "output", "cell")
}


MATHML_NAMESPACE = "http://www.w3.org/1998/Math/MathML"
#: The MathML a feedback page keeps (mathml.py writes it from TeX): presentation markup, drawn by the browser.
#: Not ``maction`` (it acts on clicks), not ``annotation-xml`` (it can hold HTML), and no HTML element at all.
MATHML_TAGS = [
    "math", "semantics", "annotation", "mrow", "mi", "mn", "mo", "ms", "mtext", "mspace", "msub", "msup",
    "msubsup", "mfrac", "msqrt", "mroot", "mover", "munder", "munderover", "mmultiscripts", "mprescripts", "none",
    "mtable", "mtr", "mtd", "mstyle", "mpadded", "mphantom", "menclose", "merror",
]  # fmt: skip
_BOOLEAN = frozenset({"true", "false"})
#: A length no larger than a few lines of text: a student's ``\rule``, ``\Huge`` or negative space can neither
#: cover the page nor push it away. The units are MathML's (``width`` etc.: of the content, in ``mpadded``).
_LENGTH = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)(em|ex|pt|px|mu|%|width|height|depth)?")
_LENGTH_LIMITS = {"em": 5, "ex": 10, "pt": 50, "px": 60, "mu": 90, "%": 500, "width": 2, "height": 2, "depth": 2}
_ENUMERATED = {
    "display": {"block", "inline"},
    "mathvariant": {
        "normal", "bold", "italic", "bold-italic", "double-struck", "bold-fraktur", "script", "bold-script",
        "fraktur", "sans-serif", "bold-sans-serif", "sans-serif-italic", "sans-serif-bold-italic", "monospace",
    },
    "form": {"prefix", "infix", "postfix"},
    "encoding": {"application/x-tex"},
    "linebreak": {"newline", "auto", "nobreak"},
    "columnalign": {"left", "center", "right"},
    "rowalign": {"top", "bottom", "center", "baseline", "axis"},
    "columnlines": {"none", "solid", "dashed"},
    "rowlines": {"none", "solid", "dashed"},
    "frame": {"none", "solid", "dashed"},
    "notation": {
        "box", "roundedbox", "circle", "left", "right", "top", "bottom", "updiagonalstrike", "downdiagonalstrike",
        "verticalstrike", "horizontalstrike", "madruwb", "actuarial", "radical", "longdiv", "updiagonalarrow",
    },
}  # fmt: skip
_FLAGS = {"stretchy", "fence", "separator", "accent", "accentunder", "largeop", "movablelimits", "symmetric"}
_FLAGS |= {"displaystyle"}
_LENGTHS = {"width", "height", "depth", "lspace", "rspace", "voffset", "minsize", "maxsize", "mathsize"}
_LENGTHS |= {"linethickness", "rowspacing", "columnspacing"}


def _mathml_length(value: str) -> bool:
    match = _LENGTH.fullmatch(value)
    return match is not None and float(match[1]) <= _LENGTH_LIMITS.get(match[2], 5)


def allowed_mathml_attribute(tag: str, name: str, value: str) -> bool:
    """bleach's filter for MathML: layout attributes with values of their kind only. No ``href``, ``xlink:*``,
    ``style``, ``class``, ``id``, colours or event handlers."""
    words = value.split()
    if name == "xmlns":
        return tag == "math" and value == MATHML_NAMESPACE
    if name == "scriptlevel":
        return re.fullmatch(r"[+-]?[0-2]", value) is not None
    if name in _FLAGS:
        return value in _BOOLEAN
    if name in _LENGTHS:
        return bool(words) and all(_mathml_length(word) for word in words)
    if name in _ENUMERATED:
        return bool(words) and set(words) <= _ENUMERATED[name]
    return False


def clean_mathml(fragment: str) -> str:
    """``fragment`` with only the MathML of ``MATHML_TAGS`` and ``allowed_mathml_attribute`` left."""
    return bleach.clean(
        fragment, tags=MATHML_TAGS, attributes=allowed_mathml_attribute, protocols=[], strip=True, strip_comments=True
    )


def allowed_attribute(tag: str, name: str, value: str) -> bool:
    """bleach's filter: the attributes of ``ATTRIBUTES``; classes of ``CLASSES`` only; a link to the web
    (or an anchor) only; an image only when it is embedded PNG/JPEG data."""
    if name not in ATTRIBUTES.get(tag, ()):
        return False
    if name == "class":
        return set(value.split()) <= CLASSES[tag]
    if name == "href":  # a literal prefix: bleach's own check then sees the same scheme, never data:
        return _LINK.match(value) is not None
    if name == "src":
        return _IMAGE.fullmatch(value) is not None
    return True


class _Sanitizer(SanitizeHTML):
    def sanitize_html_tags(self, html_str):
        return bleach.clean(
            html_str, tags=TAGS, attributes=allowed_attribute, protocols=PROTOCOLS, strip=True, strip_comments=True
        )


class _Renderer(IPythonRenderer):
    """nbconvert's markdown renderer, except for ``attachment:`` images (a PNG/JPEG attachment is embedded,
    any other (SVG, HTML) or a missing one is no image, and never an error) and literal dollar signs."""

    def text(self, text: str) -> str:
        # A dollar sign that opens no math (``\$5``, or a lone ``$``) is written ``\$``, as MathJax and mathml.py
        # read it: only what markdown took for math is delimited by dollars on the page.
        return super().text(text).replace("$", "\\$")

    def image(self, text: str, url: str, title: str | None = None) -> str:
        if url.startswith(ATTACHMENT):
            url = _embedded(self.attachments.get(url[len(ATTACHMENT) :]))
        return HTMLRenderer.image(self, text, url, title)  # nbconvert's own would raise for a missing attachment


def _embedded(bundle) -> str:
    for mime in SAFE_ATTACHMENTS:
        data = bundle.get(mime) if isinstance(bundle, dict) else None
        if isinstance(data, list):
            data = "".join(data)
        if isinstance(data, str):
            return f"data:{mime};base64,{''.join(data.split())}"
    return ""


def render_markdown(source: str, attachments: dict | None = None) -> str:
    """nbconvert's markdown rendering (``markdown2html_mistune``), with the cell's attachments as ``_Renderer``
    embeds them."""
    return MarkdownWithMath(renderer=_Renderer(escape=False, attachments=attachments or {})).render(source)


def safe_markdown2html(source: str) -> str:
    """nbconvert's markdown filter followed by the same cleaning as ``sanitize_notebook``.

    The feedback and formgrader templates render every markdown cell (and comment) a second time.
    Text that the first cleaning left alone as text can become live markdown then (a link inside an
    HTML block, an image), so the course configuration replaces their ``markdown2html`` with this.
    A function of its text alone, remembered per process (``MARKDOWN_REMEMBERED`` texts): every submission of an
    assignment holds the release's markdown cells (a cell's text is bounded by the notebook's size).
    """
    html = _MARKDOWN.get(source)
    if html is None:
        html = kept_whole(_Sanitizer().sanitize_html_tags(render_markdown(source)))
        remember_markdown(source, html)
        fragments.computed("markdown", source, html)
    return html


MARKDOWN_REMEMBERED = 2048
_MARKDOWN: dict[str, str] = {}


def remember_markdown(source: str, html: str) -> None:
    """``safe_markdown2html(source)`` is ``html`` (this process's, or one that ``fragments`` kept)."""
    if len(_MARKDOWN) >= MARKDOWN_REMEMBERED:
        _MARKDOWN.clear()
    _MARKDOWN[source] = html


#: A ``<pre>`` element (highlighted code, a code block) in rendered, cleaned HTML.
_PRE = re.compile(r"<pre\b[^>]*>.*?</pre>", re.DOTALL | re.IGNORECASE)


def kept_whole(html: str) -> str:
    """``html`` with the line breaks inside its ``<pre>`` elements written ``&#10;``: the templates' second markdown
    pass reads an HTML block only up to a blank line, and the rest of a code block with a blank line in it became
    markdown there (an indented line a code block of escaped tags, ``*args`` emphasis). The page shows the same."""
    return _PRE.sub(lambda pre: pre.group(0).replace("\n", "&#10;"), html)


def show_source(cell) -> None:
    """Drop the metadata with which a renderer (nbconvert, JupyterLab, Jupyter Book) would hide the source."""
    metadata = cell.metadata
    metadata.get("transient", {}).pop("remove_source", None)
    for key in ("source_hidden", "outputs_hidden"):
        metadata.get("jupyter", {}).pop(key, None)
    for key in HIDING_KEYS:
        metadata.pop(key, None)
    if isinstance(metadata.get("tags"), list):
        metadata["tags"] = [tag for tag in metadata["tags"] if tag not in HIDING_TAGS]
    for key in ("transient", "jupyter", "tags"):
        if key in metadata and not metadata[key]:
            del metadata[key]


def _safe_attachments(cell) -> dict:
    """The cell's attachments with their PNG/JPEG data only; an attachment without any is dropped."""
    kept = {}
    for name, bundle in cell.get("attachments", {}).items():
        safe = (
            {mime: data for mime, data in bundle.items() if mime in SAFE_ATTACHMENTS}
            if isinstance(bundle, dict)
            else {}
        )
        if safe:
            kept[name] = safe
    return kept


#: Output metadata that nbconvert's templates read: the rest is dropped (``filenames`` would point an image at
#: any URL). ``width`` and ``height`` are written into the page without quotes (classic base.html.j2:
#: ``width={{ width | escape_html }}``), so only a plain number may stay: "1 onerror=alert(1)" added a live
#: event handler to the feedback page and to formgrader's, where the instructor is signed in.
_NUMBER = re.compile(r"\d{1,6}(\.\d{1,6})?")


def _safe_output_metadata(metadata) -> dict:
    """``metadata`` of one output with only numeric ``width``/``height``, a boolean ``unconfined`` and a text
    ``alt``, at its top level and per MIME type."""
    if not isinstance(metadata, dict):
        return {}
    kept = {}
    for key, value in metadata.items():
        if key in ("width", "height"):
            if isinstance(value, bool) or not isinstance(value, int | float | str) or not _NUMBER.fullmatch(str(value)):
                continue
            kept[key] = value
        elif key == "unconfined" and isinstance(value, bool):
            kept[key] = value
        elif key == "alt" and isinstance(value, str):
            kept[key] = value
        elif "/" in key and isinstance(value, dict):  # a MIME type's own metadata
            inner = _safe_output_metadata({k: v for k, v in value.items() if "/" not in k})
            if inner:
                kept[key] = inner
    return kept


def sanitize_notebook(nb):
    """``nb``, cleaned in place (and returned) for display in a browser."""
    sanitizer = _Sanitizer()
    for index, cell in enumerate(nb.cells):
        show_source(cell)
        attachments = _safe_attachments(cell)
        if cell.cell_type == "markdown":  # rendered, then cleaned as nbconvert's SanitizeHTML cleans markdown
            source = cell.source if isinstance(cell.source, str) else "".join(cell.source)
            if attachments:  # a student's pasted images: never kept in memory (nor do the release's cells have any)
                cell.source = kept_whole(sanitizer.sanitize_html_tags(render_markdown(source, attachments)))
            else:
                cell.source = safe_markdown2html(source)
        else:
            for output in cell.get("outputs", []):
                if "metadata" in output:
                    output["metadata"] = _safe_output_metadata(output["metadata"])
                data = output.get("data", {})
                if "text/markdown" in data:  # rendered like a markdown cell, then cleaned as HTML
                    rendered = render_markdown("".join(data.pop("text/markdown")))
                    data.setdefault("text/html", rendered)
            sanitizer.preprocess_cell(cell, {}, index)
        if attachments:
            cell.attachments = attachments
        else:
            cell.pop("attachments", None)
    return nb
