"""The page fragments of each release, computed once per machine.

A feedback page's costly parts are remembered per process: its markdown cells sanitized (``sanitize``), its code
highlighted (``feedback``), its math typeset (``mathml``). Most of them are the release's, the same on every
page of an assignment, so a judge process's first page of each assignment paid for them (some 0.1 s of CPU a
release, in each worker). When a judge process loads the assignments (``judging.load``), ``share`` renders the
page of each release as an unchanged submission shows it, and keeps what that computed beside the remembered
self-checks (``selfcheck._remembered_folder``: out of every kernel's reach), under the sha256 of the release,
the source and the environment (``selfcheck.environment_digest``); the machine's other judge processes read it
instead. Only what a release's own cells produce is kept: what a student wrote is computed where it is read and
never written anywhere. The remembered values are the functions' own results, keyed by all of their inputs: a
page is the same byte for byte with or without them.
"""

from __future__ import annotations

import contextlib
import copy
import json
import threading

#: What ``recording`` collects: ``[kind, key, value]`` of each fragment its thread computes meanwhile (only its
#: thread's: another thread may be rendering a student's page).
_recording: list | None = None
_recording_thread: int | None = None


def computed(kind: str, key, value) -> None:
    """A memo of ``kind`` ("markdown", "highlight" or "math") computed ``value`` for ``key`` (JSON data)."""
    if _recording is not None and threading.get_ident() == _recording_thread:
        _recording.append([kind, key, value])


@contextlib.contextmanager
def recording():
    global _recording, _recording_thread
    _recording, _recording_thread = [], threading.get_ident()
    try:
        yield _recording
    finally:
        _recording, _recording_thread = None, None


def adopt(entries: list) -> None:
    """Put ``entries`` (``recording``'s, as read back from JSON) into this process's memos; ValueError if one has
    not the shape of a fragment."""
    from . import feedback, mathml, sanitize

    if not isinstance(entries, list) or not all(_fragment(entry) for entry in entries):
        raise ValueError("not a list of page fragments")  # and none adopted
    for kind, key, value in entries:
        if kind == "markdown":
            sanitize.remember_markdown(key, value)
        elif kind == "highlight":
            feedback.remember_highlighted(tuple(key), value)
        else:
            mathml.remember(tuple(key), tuple(value))


def _fragment(entry) -> bool:
    if not (isinstance(entry, list) and len(entry) == 3):
        return False
    kind, key, value = entry
    if kind == "markdown":
        return isinstance(key, str) and isinstance(value, str)
    if kind == "highlight":
        return _strings(key, 4, optional=(2, 3)) and isinstance(value, str)
    return kind == "math" and _math(key, value)


def _strings(key, length: int, optional=()) -> bool:
    return (
        isinstance(key, list)
        and len(key) == length
        and all(isinstance(k, str) or (i in optional and k is None) for i, k in enumerate(key))
    )


def _math(key, value) -> bool:
    return (
        isinstance(key, list)
        and len(key) == 3
        and isinstance(key[0], str)
        and all(type(k) is int for k in key[1:])
        and isinstance(value, list)
        and len(value) == 3
        and type(value[0]) is bool
        and isinstance(value[1], str)
        and type(value[2]) is int
    )


def forget() -> None:
    """Forget every fragment this process remembers (the benchmarks' cold start)."""
    from . import feedback, mathml, sanitize

    sanitize._MARKDOWN.clear()
    feedback._HIGHLIGHTED.clear()
    mathml.forget()


#: The metadata a kernel's executed notebook has, which chooses the highlighter of every page (a release has none).
KERNEL_LANGUAGE = {"name": "python", "pygments_lexer": "ipython3"}


def render_release(name: str, assignment) -> None:
    """Render the page of ``assignment``'s release as a submission that changed nothing shows it, rebuilt as the
    grader rebuilds every submission (with its demonstration cells run, and skipped: ``--skip-demos`` shows each
    under a note), its test cells as the judge writes them back, no outputs: for the memos to hold its fragments."""
    from .model import Job
    from .pages import render_page
    from .rebuild import graded_notebook, rebuild_submission
    from .sanitize import sanitize_notebook

    release = copy.deepcopy(assignment.release)
    release.metadata["language_info"] = dict(KERNEL_LANGUAGE)
    for skip_demos in (False, True):
        rebuilt, _ = rebuild_submission(release, release, skip_untouched_demos=skip_demos)
        graded = sanitize_notebook(graded_notebook(rebuilt, assignment.judge.tests, {}))
        render_page(graded, Job("", name, None), assignment, {})


#: How long a process waits for another one rendering the same release (then renders it too, keeping nothing):
#: a release takes a fraction of a second, and a first page that renders it costs no more.
WAIT_SECONDS = 10


def share(assignments: dict) -> list[str]:
    """The fragments of each assignment's release in this process's memos: read where another process of this
    machine kept them, else computed (``render_release``) and kept. A release another process is rendering at
    this moment comes last, as ``selfcheck.checked_references`` does. Where nothing can be kept safely
    (``selfcheck._remembered_folder``), nothing is done: each first page renders its own, as before. Returns
    what failed, ``name: Type: message`` (a page of that assignment then says it when it is asked for)."""
    from . import selfcheck

    folder = selfcheck._remembered_folder()
    if folder is None:
        return []
    wanted = {name: a for name, a in assignments.items() if a.release is not None}
    failed, busy = [], []
    for wait, names in ((False, list(wanted)), (True, busy)):
        for name in names:
            try:
                if not _shared(folder, name, wanted[name], wait):
                    busy.append(name)
            except Exception as exc:  # noqa: BLE001 (a head start only; the others are shared all the same)
                failed.append(f"{name}: {type(exc).__name__}: {exc}")
    return failed


def _shared(folder, name: str, assignment, wait: bool) -> bool:
    """False if another process holds this release's lock and ``wait`` is False; else True, the fragments in."""
    import nbformat

    from . import selfcheck

    content = nbformat.writes(assignment.release) + nbformat.writes(assignment.source) + "\npage fragments"
    key = selfcheck._key(content)
    path = folder / f"{key}.fragments.json"
    with open(folder / f"{key}.lock", "a") as lock:
        if not selfcheck._lock(lock, WAIT_SECONDS if wait else 0):
            if not wait:
                return False
            render_release(name, assignment)  # the other process is stuck: this one's own, kept nowhere
            return True
        try:
            adopt(json.loads(path.read_text()))
            selfcheck._used(path)
            return True
        except (OSError, ValueError, TypeError, RecursionError):  # none kept, or not readable as such: render here
            pass
        with recording() as entries:
            render_release(name, assignment)
        _keep(path, entries, key, content)
    return True


def _keep(path, entries: list, key: str, content: str) -> None:
    """``selfcheck._keep_text`` of ``entries``, unless they hold this process's own marks (no fragment of a page)."""
    from . import mathml, selfcheck

    text = json.dumps(entries)
    if mathml._SECRET not in text:
        selfcheck._keep_text(path, text, key, content)
