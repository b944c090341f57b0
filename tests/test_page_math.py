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
    mathml.forget()
    nb = submission(assignment)
    for _ in range(2):  # read alone the first time, remembered the second
        [(new, old)] = pages_both_ways(nb)
        assert new == old
    assert new.count("<math ") > 10


def _output(kind: str, data: str):
    return nbformat.v4.new_output("display_data", data={kind: data, "text/plain": "x"})


def hostile_notebook():
    """Math where a student or an instructor can put it: markdown cells (with dollars in code), outputs of every
    kind, comments; and what must stay TeX (code, a stream)."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell(
            "Inline $a_1$ and $$b_2$$ and `$HOME $x$`\n\n```\n$y_1$ \\(z\\)\n```\n\n\\$5 or $6"
        ),
        nbformat.v4.new_markdown_cell("<pre>$c_3$</pre> <code>$d_4$</code> after $e_5$ and a lone $"),
        nbformat.v4.new_markdown_cell("Half an expression $f_6"),
        nbformat.v4.new_markdown_cell("closed here$ by the next cell? $g_7$"),
        nbformat.v4.new_code_cell('print("$h_8$")  # \\(i_9\\)'),
    ]
    nb.cells[-1].outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="$j$ \\(k\\)\n"),
        _output("text/html", "<p>Output \\(c_3\\) and \\[d_4\\] and $l$</p><pre>$m$</pre>"),
        _output("text/latex", "$n_1 + n_2$"),
        _output("text/markdown", "Markdown output $o_1$ and `$p$`"),
        nbformat.v4.new_output("error", ename="E", evalue="$q$", traceback=["$r$ \\[s\\]"]),
    ]
    answer = nbformat.v4.new_markdown_cell("My answer: $t = u^2$ " + " ".join(f"$v_{{{i}}}$" for i in range(12)))
    answer.metadata["nbgrader"] = {
        "solution": True,
        "grade": True,
        "grade_id": "answer",
        "points": 2,
        "schema_version": 3,
    }
    nb.cells.append(answer)
    return nb


@pytest.mark.parametrize("budget", [3000, 7, 1], ids=["whole_budget", "budget_ends_in_a_cell", "one_expression"])
def test_hostile_cells_outputs_and_comments_are_typeset_as_before(budget, monkeypatch):
    """Every place math can be, a comment with math in it, and a page budget that runs out in the middle."""
    monkeypatch.setattr(mathml, "MAX_EXPRESSIONS", budget)
    for _ in range(2):  # read alone the first time, remembered the second
        [(new, old)] = pages_both_ways(hostile_notebook(), comment="Well done: $w^2$, not \\$3.")
        assert new == old
    if budget == 3000:
        # 2 + 1 + 1 in markdown cells, 3 + 1 + 1 in outputs, 13 in the answer, 1 in its comment
        assert new.count("<math ") == 23, new.count("<math ")
        assert "<msup><mi>w</mi><mn>2</mn></msup>" in new and "not $3." in new
        assert "<pre>$c_3$</pre>" in new and "<code>$d_4$</code>" in new and "$y_1$ \\(z\\)" in new


#: Pages with marks that reading a fragment alone would get wrong: each must come out as the whole page read
#: at once (``typeset`` sees it and reads the page whole).
MISLEADING = {
    "fragment_inside_pre": "<pre>" + mathml.fragment("<p>$a$</p>") + "</pre><p>$b$</p>",
    "fragment_opens_pre": mathml.fragment("<p>a</p><pre>") + "<p>$b$</p></pre><p>$c$</p>",
    "fragment_ends_inside_a_tag": mathml.fragment('<p>a</p><a title="x') + '<p>$b$</p>">y</a><p>$c$</p>',
    "fragment_opens_script": mathml.fragment("<p>$a$</p><script>") + "<p>$b$</p></script><p>$c$</p>",
    "text_beside_a_fragment": "<p>$a" + mathml.fragment("b$ and $c$</p>"),
    "fragment_text_before_text": "<p>" + mathml.fragment("$a") + "b$</p>",
    "end_mark_first": mathml._END + "<p>$a$</p>" + mathml._START + "<p>$b$</p>",
    "end_mark_left_over": mathml.fragment("<p>$a$</p>") + "<p>$b$</p>" + mathml._END,
    "nested_marks": mathml._START + mathml.fragment("<p>$a$</p>") + "<p>$b$</p>" + mathml._END,
    "looks_highlighted": '<div class="x"><pre>$a$</pre></div>$b$',
}


@pytest.mark.parametrize("page", MISLEADING.values(), ids=MISLEADING.keys())
def test_a_fragment_that_reads_otherwise_alone_is_read_with_the_page(page):
    for _ in range(2):
        assert mathml.typeset(page) == old_typeset(mathml.unmarked(page))
    assert mathml.typeset(mathml.fragment(page)) == old_typeset(mathml.unmarked(page))


def test_the_page_budget_counts_remembered_fragments(monkeypatch):
    """A remembered fragment is used only while the page's budget outlasts it: past it, TeX and \\$ stay."""
    cells = [mathml.fragment("<p>$a$</p>"), mathml.fragment("<p>$b$ \\$</p>"), mathml.fragment("<p>$c$</p>")]
    page = "\n".join(cells)
    mathml.typeset(page)  # remembered with the whole budget
    monkeypatch.setattr(mathml, "MAX_EXPRESSIONS", 2)
    assert mathml.typeset(page) == old_typeset(mathml.unmarked(page))
    assert mathml.typeset(page).count("<math ") == 2 and "\\$</p>" in mathml.typeset(page)
    monkeypatch.setattr(mathml, "MAX_TEX", 0)  # the limits key what is remembered
    assert mathml.typeset(page) == old_typeset(mathml.unmarked(page)) and "<math " not in mathml.typeset(page)


def test_what_is_remembered_is_bounded(monkeypatch):
    """A student's many long answers cannot fill the grader's memory: the oldest fragments go, the newest stay."""
    mathml.forget()
    monkeypatch.setattr(mathml, "MAX_REMEMBERED_TOTAL", 40_000)
    cells = [mathml.fragment(f"<p>{i} $x_{{{i}}}$ {'y' * 900}</p>") for i in range(40)]
    page = "\n".join(cells)
    assert mathml.typeset(page) == old_typeset(mathml.unmarked(page))
    assert 0 < mathml._remembered_total <= 40_000 and len(mathml._REMEMBERED) < 40
    assert next(reversed(mathml._REMEMBERED))[0] == cells[-1][len(mathml._START) : -len(mathml._END)]
    # One fragment larger than a tenth of it is not remembered: it would push out every other.
    kept = dict(mathml._REMEMBERED)
    huge = mathml.fragment(f"<p>$z$ {'y' * 5_000}</p>")
    assert mathml.typeset(huge) == old_typeset(mathml.unmarked(huge))
    assert dict(mathml._REMEMBERED) == kept
    mathml.forget()
