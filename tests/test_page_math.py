r"""Feedback pages typeset their math fragment by fragment (mathml.fragment, mathml.typeset) exactly as the whole
page read at once did: the old reading is kept here (``old_typeset``, int8lab before fragments) and every page
below must come out byte for byte the same, for a solved submission of every notebook and for hostile cells.
"""

from __future__ import annotations

import copy
import re
from html.parser import HTMLParser

import nbformat
import pytest
from sample_submissions import ASSIGNMENTS, submission

from int8lab.grading import mathml


def old_typeset(page: str) -> str:
    """``mathml.typeset`` before fragments: the whole page read by html.parser, one budget of expressions."""
    budget = [mathml.MAX_EXPRESSIONS]
    pieces, done = [], 0
    for start, end in _text_runs(page):
        pieces += [page[done:start], mathml._typeset_text(page[start:end], budget)]
        done = end
    pieces.append(page[done:])
    return "".join(pieces)


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
        if tag in mathml.SKIP_TAGS:
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


def pages_both_ways(nb, comment: str | None = "No response.") -> list[tuple[str, str]]:
    """(new, old) typeset body of ``nb``'s feedback page, rendered by the feedback exporter as the workers render it
    (``pages._exporter``); every solution cell gets ``comment``, every graded cell 0 points."""
    from int8lab.grading import pages
    from int8lab.grading.sanitize import sanitize_notebook

    grades, comments = {}, {}
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("grade") or meta.get("task"):
            grades[meta["grade_id"]] = (0.0, meta.get("points", 0))
        if meta.get("solution") or meta.get("task"):
            comments[meta["grade_id"]] = comment
    resources = {
        "metadata": {"name": "page"},
        "unique_key": "page",
        "output_files_dir": "page_files",
        "nbgrader": {
            "student": "alice",
            "assignment": "a",
            "notebook": "page",
            "grades": grades,
            "comments": comments,
            "score": 0.0,
            "max_score": sum(points for _, points in grades.values()),
        },
    }
    exporter = pages._exporter()
    bodies = []

    def both(body):
        assert mathml._typeset_marked(body) is not None  # read by fragments, not whole again
        bodies.append((mathml.typeset(body), old_typeset(mathml.unmarked(body))))
        return bodies[-1][0]

    filters = exporter.environment.filters
    saved = filters["typeset_math"]
    filters["typeset_math"] = both
    try:
        page, _ = exporter.from_notebook_node(sanitize_notebook(copy.deepcopy(nb)), resources)
    finally:
        filters["typeset_math"] = saved
    assert len(bodies) == 1 and mathml._SECRET not in page  # no mark is left on the page
    return bodies


@pytest.mark.parametrize("assignment", sorted(ASSIGNMENTS))
def test_a_solved_page_is_the_same_as_the_whole_page_read_at_once(assignment):
    mathml._remembered.cache_clear()
    nb = submission(assignment)
    for _ in range(2):  # read alone the first time, remembered the second
        [(new, old)] = pages_both_ways(nb)
        assert new == old
    assert new.count("<math ") > 10
