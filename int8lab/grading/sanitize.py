"""Sanitize what an instructor's browser renders of a submission, with nbconvert's sanitizer (bleach).

Applied to every notebook OUT keeps (formgrader shows it, the feedback page is made from it):
markdown cells are rendered to HTML first (so that a markdown link such as
``[x](javascript:...)`` is cleaned like an HTML one), then they, raw cells and HTML/markdown
outputs are cleaned to a list of harmless tags and http/https/mailto links, and
outputs of any other type than plain text, PNG/JPEG images, LaTeX and JSON are dropped
(JavaScript, SVG, widgets). Scripts, event handlers and ``javascript:`` URLs do not survive;
plots (PNG) and tables (``<table>``) do.
"""

from __future__ import annotations

from nbconvert.filters.markdown_mistune import markdown2html_mistune
from nbconvert.preprocessors.sanitize import SanitizeHTML

TAGS = [
    "a", "abbr", "b", "blockquote", "br", "code", "div", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i",
    "li", "ol", "p", "pre", "span", "strong", "sub", "sup", "table", "tbody", "td", "tfoot", "th", "thead",
    "tr", "ul",
]  # fmt: skip
ATTRIBUTES = {
    "a": ["href", "title"],
    "abbr": ["title"],
    "table": ["class", "border"],
    "td": ["colspan", "rowspan"],
    "th": ["colspan", "rowspan"],
    "div": ["class"],
    "span": ["class"],
}
SAFE_ATTACHMENTS = ("image/png", "image/jpeg")


def _sanitizer() -> SanitizeHTML:
    return SanitizeHTML(tags=TAGS, attributes=ATTRIBUTES, strip=True)


def safe_markdown2html(source: str) -> str:
    """nbconvert's markdown filter followed by the same cleaning as ``sanitize_notebook``.

    The feedback and formgrader templates render every markdown cell (and comment) a second time.
    Text that the first cleaning left alone as text can become live markdown then (a link inside an
    HTML block, an image), so the course configuration replaces their ``markdown2html`` with this.
    """
    return _sanitizer().sanitize_html_tags(markdown2html_mistune(source))


def sanitize_notebook(nb):
    """``nb``, cleaned in place (and returned) for display in a browser."""
    sanitizer = _sanitizer()
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            cell.source = markdown2html_mistune(cell.source)
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "text/markdown" in data:  # rendered like a markdown cell, then cleaned as HTML
                rendered = markdown2html_mistune("".join(data.pop("text/markdown")))
                data.setdefault("text/html", rendered)
        sanitizer.preprocess_cell(cell, {}, index)
        for name, bundle in list(cell.get("attachments", {}).items()):
            cell.attachments[name] = {k: v for k, v in bundle.items() if k in SAFE_ATTACHMENTS}
    return nb
