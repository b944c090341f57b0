"""Hostile students: in-process tricks against the grader, by the class of attack they belong to.

Each entry is ``name: (baseline, assignment, code)``: the code is appended to the baseline
submission's answer cell (``stubs`` solves nothing, ``floor`` rounds down, ``zeros`` returns
zeros and a scale of 0.0), so a trick that gains nothing scores exactly what its baseline scores.
"""

from __future__ import annotations

import html
import re

from int8lab.grading.testcells import HIDDEN_BEGIN, HIDDEN_END

HOSTILE = {
    # Scores read from outputs: nbgrader took a cell's score from its first execute_result.
    "h_display_hook_event": (
        "stubs",
        "01_weights",
        "get_ipython().events.register('pre_run_cell', lambda *args: get_ipython().display_pub.publish("
        "{'text/plain': '10'}))\nget_ipython().events.register('post_run_cell', lambda *args: display(10))",
    ),
    "h_displayhook_in_stub": (
        "stubs",
        "01_weights",
        "import sys\ndef quantized_weights(weights):\n    sys.displayhook(10)\n    raise NotImplementedError()",
    ),
    # Rewriting or skipping what runs.
    "h_input_transformer": (
        "stubs",
        "01_weights",
        "get_ipython().input_transformers_post.append(lambda lines: ['print(3)\\n'])",
    ),
    "h_ast_transformer": (
        "stubs",
        "01_weights",
        "import ast\nclass Empty(ast.NodeTransformer):\n    def visit_Module(self, node):\n"
        "        node.body = [ast.Expr(ast.Constant(3))]\n        return node\n"
        "get_ipython().ast_transformers.append(Empty())",
    ),
    "h_run_cell_patched": (
        "stubs",
        "01_weights",
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "_real = InteractiveShell.run_cell\n"
        "InteractiveShell.run_cell = lambda self, raw_cell, *a, **k: _real(self, 'print(10)', *a, **k)",
    ),
    "h_trace_skips_lines": (
        "stubs",
        "01_weights",
        "import sys\ndef _skip(frame, event, arg):\n"
        "    if frame.f_code.co_filename.startswith('<ipython'):\n        raise SystemExit\n    return None\n"
        "get_ipython().events.register('pre_run_cell', lambda *a: sys.settrace(_skip))",
    ),
    # Replacing the judge.
    "h_fake_records_module": (
        "stubs",
        "01_weights",
        "import sys, types\nfake = types.ModuleType('int8lab.grading.records')\n"
        "fake.returned = fake.failed = lambda *a, **k: None\nsys.modules['int8lab.grading.records'] = fake",
    ),
    "h_import_hook": (
        "floor",
        "01_weights",
        "import builtins\n_import = builtins.__import__\n"
        "def _hook(name, *args, **kwargs):\n    module = _import(name, *args, **kwargs)\n"
        "    if name.startswith('int8lab'):\n        module.check_close = module.check_scale = lambda *a, **k: None\n"
        "    return module\nbuiltins.__import__ = _hook",
    ),
    "h_patched_comparisons": (
        "floor",
        "01_weights",
        "import builtins, numpy, torch, int8lab.checks\nnumpy.allclose = lambda *a, **k: True\n"
        "torch.equal = lambda *a, **k: True\nbuiltins.abs = lambda value: 0\n"
        "int8lab.checks.check_close = int8lab.checks.check_scale = lambda *a, **k: None\n"
        "check_close = check_scale = check_true = lambda *a, **k: None",
    ),
    "h_patched_tensor_conversion": (
        "floor",
        "01_weights",
        "import torch\ntorch.Tensor.__eq__ = lambda self, other: torch.ones((), dtype=bool)\n"
        "torch.Tensor.equal = torch.Tensor.allclose = lambda self, *a, **k: True\n"
        "torch.Tensor.tolist = lambda self: []\ntorch.Tensor.float = lambda self: self\n"
        "torch.Tensor.__float__ = lambda self: 0.0",
    ),
    # Answers that lie.
    "h_equal_to_anything": (
        "zeros",
        "01_weights",
        "class Anything(float):\n    def __eq__(self, other):\n        return True\n"
        "    __ne__ = lambda self, other: False\n    __le__ = __ge__ = __lt__ = __gt__ = __eq__\n"
        "    def __abs__(self):\n        return self\n    def __sub__(self, other):\n        return Anything(0)\n"
        "    __rsub__ = __sub__\n"
        "class AnyTensor(torch.Tensor):\n    def __eq__(self, other):\n"
        "        return torch.ones_like(other, dtype=bool)\n"
        "def quantized_weights(weights):\n    return torch.zeros_like(weights).as_subclass(AnyTensor), Anything(0.0)",
    ),
    "h_reads_checker_frame": (
        "zeros",
        "01_weights",
        "import sys\nclass Spy(float):\n    def __float__(self):\n        frame = sys._getframe(1)\n"
        "        while frame is not None:\n            for key in ('expected', 'reference_scale', 'reference'):\n"
        "                if key in frame.f_locals:\n                    return float(frame.f_locals[key])\n"
        "            frame = frame.f_back\n        return 0.0\n"
        "def quantized_weights(weights):\n    return torch.zeros_like(weights), Spy(0.0)",
    ),
    # Reference answers leaking: everything the kernel holds, printed in encodings scrubbing misses.
    "h_prints_kernel_memory": (
        "stubs",
        "01_weights",
        "import base64, gc, sys\ntexts = [str(x) for x in list(In) + list(globals().values())]\n"
        "texts += [str(o) for o in gc.get_objects() if isinstance(o, str)][:200000]\n"
        "blob = '\\n'.join(texts)[:300000]\nprint(base64.b64encode(blob.encode()).decode())\n"
        "print('\\n'.join('\\u200b'.join(line) for line in blob[:20000].splitlines()))",
    ),
}


def hidden_lines(nb) -> set[str]:
    """Every meaningful line (8+ characters, stripped) that only appears inside hidden-test regions."""
    hidden, visible, inside = set(), set(), False
    for cell in nb.cells:
        for line in cell.source.split("\n"):
            if line.strip() == HIDDEN_BEGIN:
                inside = True
            elif line.strip() == HIDDEN_END:
                inside = False
            elif len(line.strip()) >= 8:
                (hidden if inside else visible).add(line.strip())
    return hidden - visible


def visible_text(page: str) -> str:
    """What a browser shows of an HTML page: tags stripped, entities decoded."""
    without_code = re.sub(r"<(script|style)\b.*?</\1>", " ", page, flags=re.S | re.I)
    return html.unescape(re.sub(r"<[^>]+>", "", without_code))


def active_content(page: str) -> list[str]:
    """Event handlers, javascript: links and scripts that a browser would run from the student's work."""
    from html.parser import HTMLParser

    found = []

    class Scan(HTMLParser):
        in_script = False

        def handle_starttag(self, tag, attrs):
            self.in_script = tag == "script"
            if tag in ("svg", "iframe", "object", "embed"):
                found.append(f"<{tag}>")
            for name, value in attrs:
                if name.startswith("on") or (value or "").strip().lower().startswith(
                    ("javascript:", "vbscript:", "data:text", "data:application")
                ):
                    found.append(f"<{tag} {name}={value}>")

        def handle_data(self, data):
            if self.in_script and "alert(" in data:
                found.append(data[:80])

    Scan().feed(page)
    return found


#: What a browser test looks for when a page runs script it should not: a dialog, this mark in the console,
#: the title or a global of that name.
SCRIPT_MARK = "PWNED"
SCRIPT_PAYLOAD = (
    f"document.title='{SCRIPT_MARK}';console.log('{SCRIPT_MARK}');window.{SCRIPT_MARK}=1;alert('{SCRIPT_MARK}')"
)
#: The payload in every form a notebook page could run: inline script, event handlers, a javascript: link, SVG.
SCRIPT_HTML = (
    f"<script>{SCRIPT_PAYLOAD}</script>"
    f'<img src="nowhere.png" onerror="{SCRIPT_PAYLOAD}">'
    f'<a href="javascript:{SCRIPT_PAYLOAD}">click</a>'
    f'<svg onload="{SCRIPT_PAYLOAD}"><circle r="4"/></svg>'
)
SCRIPT_SVG = f'<svg xmlns="http://www.w3.org/2000/svg" onload="{SCRIPT_PAYLOAD}"/>'
#: Appended to the answer cell: the same payload as HTML, JavaScript and SVG outputs.
SCRIPT_OUTPUTS = f"""
from IPython.display import HTML, Javascript, display
display(HTML({SCRIPT_HTML!r}))
display(Javascript({SCRIPT_PAYLOAD!r}))
display({{"image/svg+xml": {SCRIPT_SVG!r}}}, raw=True)
"""
#: Shown beside the payload in a derivation, so that a test can tell the answer reached the page.
ANSWER_TEXT = "My derivation of the bias scale"


def script_in_derivations(nb) -> None:
    """Every markdown answer cell becomes some text and the script payload (an ``edit`` for submission())."""
    for cell in nb.cells:
        if cell.cell_type == "markdown" and cell.metadata.get("nbgrader", {}).get("solution"):
            cell.source = f"{ANSWER_TEXT}\n\n{SCRIPT_HTML}\n\n[a link](javascript:{SCRIPT_PAYLOAD})"
