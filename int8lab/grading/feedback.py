"""Feedback: nbgrader's feedback pages, each whole in one file.

nbgrader renders each graded notebook to OUT/feedback/<student>/<assignment>/<notebook>.html, and
``release_feedback`` sends that file alone. The course configuration (``course.configure``) points it at
``templates/int8lab_feedback``, which loads no script: the page's math is MathML, written from its TeX when the
page is (``mathml.typeset``), so a page fetched alone, offline, shows it typeset. Formgrader's pages, served by
a Jupyter server, keep the server's MathJax (``templates/int8lab_formgrade``).

Each markdown cell, comment and highlighted code cell of a page is marked (``mathml.fragment``) for
``mathml.typeset`` to read once per process: most of them are the release's, the same on every student's page.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from nbconvert.exporters import HTMLExporter, TemplateExporter
from nbconvert.filters.highlight import Highlight2HTML
from nbconvert.filters.widgetsdatatypefilter import WidgetsDataTypeFilter

from . import fragments, mathml
from .sanitize import safe_markdown2html

TEMPLATES = Path(__file__).parent / "templates"
TEMPLATE_NAME = "int8lab_feedback"
#: formgrader's submission page, with MathJax from the Jupyter server instead of a CDN.
FORMGRADE_TEMPLATE_NAME = "int8lab_formgrade"
#: Where int8lab before MathML pages put MathJax: a ``mathjax/`` folder beside each page, linked to OUT/.mathjax.
OLD_MATHJAX_FOLDER = "mathjax"
OLD_MATHJAX_COPY = ".mathjax"


def remove_mathjax_copies(out: Path) -> int:
    """Remove the MathJax copies that earlier versions put in OUT (the pages no longer load them); returns how
    many folders went. Only a folder holding ``MathJax.js`` goes, and never through a link."""
    folders = [out / OLD_MATHJAX_COPY] + sorted((out / "feedback").glob(f"*/*/{OLD_MATHJAX_FOLDER}"))
    removed = 0
    for folder in folders:
        if folder.is_dir() and not folder.is_symlink() and (folder / "MathJax.js").is_file():
            shutil.rmtree(folder)
            removed += 1
    return removed


#: An image tag (its attribute values may hold ``>``), and an ``alt`` attribute in it.
_IMAGE_TAG = re.compile(r"""<img\b(?:[^>"']|"[^"]*"|'[^']*')*>""", re.IGNORECASE)
_ALT = re.compile(r"""\salt\s*=""", re.IGNORECASE)
#: What nbconvert's HTML exporter gives an image without alternative text.
NO_ALT_TEXT = "No description has been provided for this image"


class FeedbackExporter(HTMLExporter):
    """The exporter of the feedback pages (``GenerateFeedback.exporter_class``, so nbgrader's pages and the
    workers' alike): nbconvert's HTML exporter without its last pass, which parses the whole page again with
    BeautifulSoup only to give images their alternative text and JupyterLab cells a tabindex. That pass took
    85 % of a page's time (a notebook 6 page: some 8,000 tags, mostly the highlighted code's spans); the page's
    template has no JupyterLab cell, and the images get the same alternative text here, by their tags."""

    def from_notebook_node(self, nb, resources=None, **kw):
        # HTMLExporter.from_notebook_node's set-up, as nbconvert 7 does it, then the template alone.
        language = nb.metadata.get("language_info", {})
        lexer = language.get("pygments_lexer", language.get("name", None))
        highlight_code = self.filters.get("highlight_code") or self._highlighter(lexer).marked
        resources = self._init_resources(resources)
        data_types = WidgetsDataTypeFilter(notebook_metadata=self._nb_metadata, parent=self, resources=resources)
        self.register_filter("highlight_code", highlight_code)
        self.register_filter("filter_data_type", data_types)
        html, resources = TemplateExporter.from_notebook_node(self, nb, resources, **kw)
        return _IMAGE_TAG.sub(_with_alt_text, mathml.unmarked(html)), resources

    def _highlighter(self, lexer: str | None) -> RememberedHighlight:
        """nbconvert's highlighter for ``lexer``, one per lexer and exporter instead of one per page: a page's code
        cells are mostly the release's, the same on every page. At most four: the lexer is the notebook's
        metadata, and a student's may name any."""
        highlighters = self.__dict__.setdefault("_highlighters", {})
        if lexer not in highlighters:
            if len(highlighters) >= 4:
                highlighters.clear()
            highlighters[lexer] = RememberedHighlight(pygments_lexer=lexer, parent=self)
        return highlighters[lexer]


_NO_MAGICS = object()  # a cell whose metadata names no magics_language (or that has no metadata)
#: ``RememberedHighlight``'s cells: (its settings as JSON: lexer, default language, formatter options; the source,
#: the language, the cell's magics_language as JSON or None) -> HTML
_HIGHLIGHTED: dict[tuple, str] = {}


def remember_highlighted(key: tuple, html: str) -> None:
    """A highlighter of the settings ``key[0]`` highlights ``key[1:]`` as ``html`` (this process's, or one that
    ``fragments`` kept)."""
    if len(_HIGHLIGHTED) >= 2048:
        _HIGHLIGHTED.clear()
    _HIGHLIGHTED[key] = html


class RememberedHighlight(Highlight2HTML):
    """nbconvert's code highlighter, remembering up to 2,048 cells it highlighted (a function of its arguments).

    Of a cell's metadata, nbconvert reads only ``magics_language`` (``_pygmentize``): the rest, which differs on
    every page (nbclient's execution times, nbgrader's fields), is no part of the key, or nothing would ever be
    remembered (the highlighting was then 60 % of a page's time).
    """

    def __call__(self, source, language=None, metadata=None):
        magics = metadata["magics_language"] if metadata and "magics_language" in metadata else _NO_MAGICS
        magics = None if magics is _NO_MAGICS else json.dumps(magics, sort_keys=True, default=str)
        try:  # settings that are not plain data (a formatter option's object) are no key for another process
            settings = [self.pygments_lexer, self.default_language, self.extra_formatter_options]
            settings = json.dumps(settings, sort_keys=True)
        except TypeError:
            return super().__call__(source, language, metadata)
        key = (settings, source, language, magics)
        highlighted = _HIGHLIGHTED.get(key)
        if highlighted is None:
            highlighted = super().__call__(source, language, metadata)
            remember_highlighted(key, highlighted)
            fragments.computed("highlight", list(key), highlighted)
        return highlighted

    def marked(self, source, language=None, metadata=None):
        """The highlighted code, marked for ``mathml.typeset`` to read once (``mathml.fragment``)."""
        return mathml.fragment(self(source, language, metadata))


def markdown2html(source: str) -> str:
    """The feedback pages' markdown filter: ``sanitize.safe_markdown2html``, marked for ``mathml.typeset`` to read
    once (``mathml.fragment``)."""
    return mathml.fragment(safe_markdown2html(source))


def _with_alt_text(tag: re.Match) -> str:
    text = tag.group(0)
    if _ALT.search(text):
        return text
    end = -2 if text.endswith("/>") else -1
    return f'{text[:end].rstrip()} alt="{NO_ALT_TEXT}"{text[end:]}'
