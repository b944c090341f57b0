r"""The feedback pages' math: TeX typeset as MathML when the page is written (int8lab/grading/mathml.py).

Pages are made as ``nbgrader generate_feedback`` makes them: the markdown rendered and cleaned as grading does
(sanitize_notebook), then the feedback template with the course configuration's filters. The browser test
opens one such page alone in an empty folder, offline.
"""

from __future__ import annotations

import re
import shutil

import nbformat
import pytest
from hostile import active_content

from int8lab.grading.sanitize import sanitize_notebook

#: The derivation of notebook 02 as a student writes it: inline and display math, a code span and a code block.
DERIVATION = r"""The scale is $s_W = \max|W| / 127$, and

$$q = \left\lfloor \frac{x}{s_{In}} \right\rceil \qquad \sum_i \hat{y}_i$$

Shell variables such as `$HOME costs $5` are code, and so is this block:

```
echo $PATH $x_1$
```
"""
#: TeX that a student could write to attack the page: a link, markup inside math, attributes latex2mathml copies.
HOSTILE_TEX = [
    r"$\href{javascript:alert('PWNED')}{click}$",
    r"$<script>alert('PWNED')</script>$",
    r"$\text{<img src=x onerror=alert('PWNED')>}$",
    r"$\text{</math><img src=x onerror=alert('PWNED')>}$",
    r"$\style{position:fixed;top:0;left:0}{\text{14 / 14}}$",
    r"$\class{navbar-fixed-top}{x}$",
    r"$\color{white}{y}\rule{2000em}{2000em}$",
]
#: A PNG (1x1) as the release's plots carry them.
PLOT = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def feedback_page(*markdown: str, outputs=()) -> str:
    """The feedback page of a notebook with these markdown cells (and a code cell with ``outputs``)."""
    from nbconvert.exporters import HTMLExporter
    from traitlets.config import Config

    from int8lab.grading.course import configure

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(text) for text in markdown])
    code = nbformat.v4.new_code_cell("plot()")
    code.outputs = list(outputs)
    nb.cells.append(code)
    config = Config()
    configure(config, ROOT_FOR_CONFIG)
    exporter = HTMLExporter(config=Config({"HTMLExporter": config.GenerateFeedback.HTMLExporter}))
    resources = {"nbgrader": {"notebook": "activations", "score": 1.0, "max_score": 2.0, "late_penalty": 0}}
    page, _ = exporter.from_notebook_node(sanitize_notebook(nb), resources=resources)
    return page


ROOT_FOR_CONFIG = "/nonexistent-course"


def _maths(page: str) -> list[str]:
    return re.findall(r"<math\b.*?</math>", page, re.DOTALL)


def test_inline_and_display_math_become_mathml_and_no_script_loads():
    page = feedback_page(DERIVATION)
    maths = _maths(page)
    assert len(maths) == 2, maths
    inline, display = maths
    assert 'display="inline"' in inline and "<msub><mi>s</mi><mi>W</mi></msub>" in inline
    assert 'display="block"' in display and "<mfrac>" in display and "⌊" in display and "∑" in display
    assert "<script" not in page.lower() and "MathJax" not in page  # (nbgrader's comment "Loading mathjax macro" stays)
    assert "\\frac" not in page and "s_W" not in page


def test_latex_delimiters_in_markdown_and_in_outputs():
    r"""``\\(...\\)``, ``\\[...\\]`` as Jupyter's markdown writes them; ``\(...\)``, ``\[...\]`` in an HTML output."""
    html = nbformat.v4.new_output("display_data", data={"text/html": r"<p>Output \(c_3\) and \[d_4\]</p>"})
    page = feedback_page(r"Cell \\(a_1\\) and \\[b_2\\]", outputs=[html])
    kinds = [(re.search(r'display="(\w+)"', m)[1], re.search(r"<msub>.*?</msub>", m)[0]) for m in _maths(page)]
    assert kinds == [
        ("inline", "<msub><mi>a</mi><mn>1</mn></msub>"),
        ("block", "<msub><mi>b</mi><mn>2</mn></msub>"),
        ("inline", "<msub><mi>c</mi><mn>3</mn></msub>"),
        ("block", "<msub><mi>d</mi><mn>4</mn></msub>"),
    ], kinds


@pytest.mark.timeout(60)  # a hang guard, not a speed figure: a quadratic scan of this page takes hours
def test_a_page_of_unclosed_delimiters_is_read_once():
    from int8lab.grading.mathml import typeset

    for opener in ("\\(", "\\[", "\\begin{x}", "$"):
        page = "<p>" + opener * 300_000 + "</p>"
        assert typeset(page) == page


def test_a_page_converts_a_bounded_amount_of_tex(monkeypatch):
    """Past the page's budget of expressions, or past the length of one, TeX stays as it is."""
    from int8lab.grading import mathml

    monkeypatch.setattr(mathml, "MAX_EXPRESSIONS", 3)
    monkeypatch.setattr(mathml, "MAX_TEX", 10)
    page = mathml.typeset("<p>$a$ $b$ $c_{1234567890}$ $d$ $e$</p>")
    assert page.count("<math ") == 2 and "<code>$c_{1234567890}$</code> $d$ $e$</p>" in page, page


def test_dollars_in_code_spans_and_blocks_are_left_alone():
    page = feedback_page(DERIVATION)
    assert "<code>$HOME costs $5</code>" in page
    assert re.search(r"<pre><code>echo \$PATH \$x_1\$\n</code></pre>", page), page[-3000:]


def test_an_escaped_dollar_is_a_dollar_sign_not_math():
    page = feedback_page(r"It costs \$5, and \$6 with tax.")
    assert "It costs $5, and $6 with tax." in page and not _maths(page)


@pytest.mark.parametrize(
    "tex",
    [
        r"$\frac{1}{$",
        r"$\begin{aligned} a &= b \end{aligned}$",
        r"$\begin{equation} x_1 \end{equation}$",  # latex2mathml drops the environment and says nothing
        r"$\unknowncommand{x}$",
        r"$\text{\textbf{x}}$",
    ],
    ids=["syntax_error", "aligned_columns", "unsupported_environment", "unknown_command", "command_in_text"],
)
def test_what_cannot_be_converted_stays_as_tex_source_in_code(tex):
    page = feedback_page(f"Before {tex} after $x_1$.")
    source = tex.replace("&", "&amp;")
    assert f"Before <code>{source}</code> after <math" in page
    assert len(_maths(page)) == 1  # the page goes on: the next expression is typeset


def test_hostile_tex_is_converted_then_sanitised():
    page = feedback_page("My answer: " + " and ".join(HOSTILE_TEX))
    maths = _maths(page)
    assert len(maths) == len(HOSTILE_TEX), maths
    assert active_content(page) == []
    for math in maths:
        tags = set(re.findall(r"<([a-zA-Z][\w-]*)", math))
        assert tags <= {"math", "mrow", "mi", "mo", "mn", "msup", "mtext", "mstyle", "mspace"}, tags  # msup: a prime
        assert not re.search(r"\s(href|style|class|mathcolor|mathbackground|width|height)=", math), math
    # What \text{} holds is shown as the text it is (its spaces no-break, as TeX keeps them), not as markup.
    assert "<mtext>&lt;img src=x onerror=alert('PWNED')&gt;</mtext>" in page.replace("\xa0", " ")


def test_the_mathml_allow_list():
    from int8lab.grading.sanitize import clean_mathml

    dirty = (
        '<math xmlns="http://www.w3.org/1998/Math/MathML" display="block" onclick="x()">'
        '<mrow href="javascript:x()" xlink:href="javascript:x()" style="position:fixed" class="hidden" id="a">'
        '<maction actiontype="statusline"><mi>a</mi><mtext>b</mtext></maction>'
        '<annotation-xml encoding="text/html"><img src="x" onerror="x()"></annotation-xml>'
        '<mspace width="-900em"></mspace><mstyle mathsize="99em" mathcolor="white"><mi>c</mi></mstyle>'
        '<mfrac linethickness="0"><mn>1</mn><mo stretchy="false" form="prefix">(</mo></mfrac>'
        "</mrow><script>x()</script></math>"
    )
    clean = clean_mathml(dirty)
    assert clean == (
        '<math xmlns="http://www.w3.org/1998/Math/MathML" display="block"><mrow><mi>a</mi><mtext>b</mtext>'
        '<mspace></mspace><mstyle><mi>c</mi></mstyle><mfrac linethickness="0"><mn>1</mn>'
        '<mo stretchy="false" form="prefix">(</mo></mfrac></mrow>x()</math>'
    ), clean


def test_every_expression_of_the_solutions_is_typeset():
    """latex2mathml converts all the TeX of the notebooks' markdown: no expression falls back to its source."""
    from int8lab.grading.mathml import typeset
    from int8lab.grading.sanitize import render_markdown
    from notebook_harness import SOURCES

    typeset_count = 0
    for source in SOURCES.values():
        for cell in nbformat.read(source, as_version=4).cells:
            if cell.cell_type != "markdown":
                continue
            rendered = render_markdown(cell.source)
            page = typeset(rendered)
            assert page.count("<code>") == rendered.count("<code>"), cell.source[:200]
            text = re.sub(r"<code>.*?</code>|<math\b.*?</math>|<[^>]*>", "", page, flags=re.DOTALL)
            assert "$" not in text.replace("\\$", ""), cell.source[:200]  # a delimiter left: math untypeset
            typeset_count += len(_maths(page))
    assert typeset_count > 300


@pytest.mark.browser
def test_a_page_alone_and_offline_shows_its_math_typeset(tmp_path):
    """The page copied into an empty folder, opened with no network: every <math> is drawn, plots too."""
    from browser_support import ScriptWatch, chromium, screenshot

    plot = nbformat.v4.new_output("display_data", data={"image/png": PLOT, "text/plain": "<Figure>"})
    page_path = tmp_path / "alone" / "activations.html"
    page_path.parent.mkdir()
    page_path.write_text(feedback_page(DERIVATION, "Hostile: " + " ".join(HOSTILE_TEX), outputs=[plot]))
    with chromium() as browser:
        context = browser.new_context(offline=True)
        page = context.new_page()
        watch = ScriptWatch().attach(page)
        requests = []
        page.on("request", lambda request: requests.append(request.url))
        page.goto(page_path.as_uri())
        drawn = typeset_math_elements(page)
        screenshot(page, "feedback-mathml-alone")
        assert drawn == {"math": 2 + len(HOSTILE_TEX), "drawn": 2 + len(HOSTILE_TEX), "fractions_drawn": 1}, drawn
        assert page.evaluate("() => document.querySelector('img').naturalWidth") == 1
        assert watch.fired(page) == []
        assert [url for url in requests if not url.startswith("file:")] == []
        context.close()
    shutil.rmtree(page_path.parent)


def typeset_math_elements(page) -> dict:
    """How many <math> elements the page has, how many the browser drew (a box of non-zero size), and how many
    fractions it drew taller than one line of text (laid out as MathML, not run together as text)."""
    return page.evaluate(
        """() => {
            const maths = [...document.querySelectorAll('math')];
            const sized = (e) => { const box = e.getBoundingClientRect(); return box.width > 0 && box.height > 0; };
            const line = parseFloat(getComputedStyle(document.body).fontSize);
            const fractions = [...document.querySelectorAll('mfrac')];
            return {
                math: maths.length,
                drawn: maths.filter(sized).length,
                fractions_drawn: fractions.filter((f) => f.getBoundingClientRect().height > 1.2 * line).length,
            };
        }"""
    )
