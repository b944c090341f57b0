"""Feedback: nbgrader's feedback pages, each whole in one file.

nbgrader renders each graded notebook to OUT/feedback/<student>/<assignment>/<notebook>.html, and
``release_feedback`` sends that file alone. The course configuration (``course.configure``) points it at
``templates/int8lab_feedback``, which loads no script: the page's math is MathML, written from its TeX when the
page is (``mathml.typeset``), so a page fetched alone, offline, shows it typeset. Formgrader's pages, served by
a Jupyter server, keep the server's MathJax (``templates/int8lab_formgrade``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

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
