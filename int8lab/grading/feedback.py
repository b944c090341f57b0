"""Feedback: nbgrader's feedback pages, made readable offline.

nbgrader renders each graded notebook to OUT/feedback/<student>/<assignment>/<notebook>.html. Its
template loads MathJax from a CDN; the course configuration (``course.configure``) points it at
``templates/int8lab_feedback`` instead, whose MathJax macro loads ``mathjax/MathJax.js`` next to
the page. ``add_mathjax`` puts that folder there: a subset of the MathJax 2 that the
jupyter-server-mathjax package ships (TeX input, HTML-CSS output, STIX-Web fonts), hard-linked from one
copy in OUT, so a thousand pages cost the disk of one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

TEMPLATES = Path(__file__).parent / "templates"
TEMPLATE_NAME = "int8lab_feedback"
#: formgrader's submission page, with MathJax from the Jupyter server instead of a CDN.
FORMGRADE_TEMPLATE_NAME = "int8lab_formgrade"
#: What the pages' MathJax configuration loads: the combined TeX/MathML/HTML-CSS configuration that
#: Jupyter's MathJax is trimmed for, the Safe extension, and the STIX-Web fonts it ships.
MATHJAX_PARTS = (
    "MathJax.js",
    "config",
    "extensions/Safe.js",
    "extensions/MathMenu.js",
    "extensions/MathZoom.js",
    "extensions/TeX",
    "jax/input",
    "jax/element",
    "jax/output/HTML-CSS",
    "fonts/HTML-CSS/STIX-Web",
)
MATHJAX_FOLDER = "mathjax"


def mathjax_source() -> Path:
    """The MathJax 2 files of the jupyter-server-mathjax package."""
    import jupyter_server_mathjax

    return Path(jupyter_server_mathjax.__file__).parent / "static"


def add_mathjax(out: Path) -> int:
    """Give every feedback page under OUT/feedback its ``mathjax/`` folder; returns how many folders got one."""
    shared = out / ".mathjax"
    if not (shared / "MathJax.js").exists():
        _copy_parts(mathjax_source(), shared)
    folders = {page.parent for page in (out / "feedback").rglob("*.html")}
    for folder in folders:
        target = folder / MATHJAX_FOLDER
        if target.is_symlink() or target.is_file():
            target.unlink()
        if not (target / "MathJax.js").exists():
            _link_tree(shared, target)
    return len(folders)


def _copy_parts(source: Path, destination: Path) -> None:
    partial = destination.with_name(destination.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for part in MATHJAX_PARTS:
        origin = source / part
        if origin.is_dir():
            shutil.copytree(origin, partial / part)
        else:
            (partial / part).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, partial / part)
    shutil.rmtree(destination, ignore_errors=True)
    os.replace(partial, destination)


def _link_tree(source: Path, destination: Path) -> None:
    """Hard links where the filesystem allows them, copies where it does not."""
    for origin in source.rglob("*"):
        target = destination / origin.relative_to(source)
        if origin.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(origin, target)
        except OSError:
            shutil.copy2(origin, target)
