"""How each autograded test cell splits into a probe (run in the student's kernel) and a judge.

A test cell of the source notebook reads, top to bottom, as statements:

    weights = torch.linspace(-2.5, 0.4, 30)              # INPUT: runs in the kernel and in the judge
    quantized, scale = quantized_weights(weights.clone())  # PROBE: the kernel records what it binds
    check_scale("...", scale, 0.0078)                    # CHECK: the judge runs it, on the record
    ### BEGIN HIDDEN TESTS
    ...                                                  # hidden: the judge only

A statement is a PROBE when it reads a *student name* (defined by a solution cell, or bound by
an earlier probe) and binds names; a statement that reads one and binds nothing is a CHECK;
any other statement above the hidden region is an INPUT, which the judge computes itself, so a
student never supplies an expected value. Hidden code runs only in the judge.

The kernel runs only INPUT and PROBE statements (``probe_source``): no check, no reference
answer and no line of a hidden test enters it.
"""

from __future__ import annotations

import ast
import enum
from dataclasses import dataclass

HIDDEN_BEGIN, HIDDEN_END = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
PROBE_MODULE = "_int8lab_records"


class Role(enum.Enum):
    INPUT = "input"
    PROBE = "probe"
    CHECK = "check"


@dataclass(frozen=True)
class Statement:
    source: str
    role: Role
    binds: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()
    #: A PROBE that calls no student code itself, only reads names earlier probes bound: the judge
    #: recomputes it from those values when they are all plain data, instead of trusting its record.
    derived: bool = False


@dataclass(frozen=True)
class TestCell:
    grade_id: str
    points: float
    statements: tuple[Statement, ...]  # the visible part, in order
    hidden: str  # the hidden part's source ('' for a visible test)
    visible_source: str  # the cell as the release shows it


class TestCellError(ValueError):
    """A test cell the judge cannot split (a fault of the notebook's author, not of a student)."""


def nbgrader_meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {}) or {}


def is_test_cell(cell) -> bool:
    meta = nbgrader_meta(cell)
    return bool(meta.get("grade")) and not meta.get("solution") and cell.get("cell_type") == "code"


def split_hidden(source: str) -> tuple[str, str]:
    """(the part the release shows, the hidden part) of a test cell's source."""
    visible, hidden, inside = [], [], False
    for line in source.split("\n"):
        if line.strip() == HIDDEN_BEGIN:
            inside = True
        elif line.strip() == HIDDEN_END:
            inside = False
        else:
            (hidden if inside else visible).append(line)
    return "\n".join(visible).rstrip() + "\n", "\n".join(hidden)


def defined_names(source: str) -> set[str]:
    """Top-level names a cell defines (functions, classes, assignments)."""
    return set().union(*(bound_names(node) for node in ast.parse(strip_magics(source)).body))


def strip_magics(source: str) -> str:
    """IPython line magics (``%matplotlib inline``) only matter in a kernel; the judge skips them."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.split("\n"))


def bound_names(node: ast.AST) -> set[str]:
    """Names a top-level statement binds, including the objects its subscript or attribute targets change."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return {node.name}
    if isinstance(node, ast.Import | ast.ImportFrom):
        return {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    names: set[str] = set()
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, ast.Lambda | ast.FunctionDef | ast.ClassDef | ast.comprehension):
            continue  # their names are local to them
        if isinstance(current, ast.Name) and isinstance(current.ctx, ast.Store | ast.Del):
            names.add(current.id)
        elif isinstance(current, ast.Subscript | ast.Attribute) and isinstance(current.ctx, ast.Store | ast.Del):
            base = current
            while isinstance(base, ast.Subscript | ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name):
                names.add(base.id)
        stack.extend(ast.iter_child_nodes(current))
    return names


def read_names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def plan_tests(source_nb) -> tuple[set[str], list[TestCell]]:
    """The student names of a source notebook and the plan of each of its test cells, in order."""
    student_names: set[str] = set()
    for cell in source_nb.cells:
        if cell.cell_type == "code" and nbgrader_meta(cell).get("solution"):
            student_names |= defined_names(cell.source)
    tainted = set(student_names)
    plans = []
    for cell in source_nb.cells:
        if not is_test_cell(cell):
            continue
        meta = nbgrader_meta(cell)
        visible, hidden = split_hidden(cell.source)
        try:
            tree = ast.parse(visible)
            ast.parse(hidden)
        except SyntaxError as exc:
            raise TestCellError(f"test cell {meta['grade_id']} is not valid Python: {exc}") from None
        statements = []
        for node in tree.body:
            binds, reads = bound_names(node), read_names(node)
            derived = False
            if reads & tainted:
                role = Role.PROBE if binds else Role.CHECK
                derived = not reads & student_names
                tainted |= binds
            else:
                role = Role.INPUT
                tainted -= binds
            source = ast.get_source_segment(visible, node)
            derived = derived and role is Role.PROBE
            statements.append(Statement(source, role, tuple(sorted(binds)), tuple(sorted(reads)), derived))
        plans.append(TestCell(meta["grade_id"], float(meta.get("points", 0)), tuple(statements), hidden, visible))
    return student_names, plans


def probe_source(test: TestCell) -> str:
    """The code the kernel runs in place of a test cell: inputs as they are, probes recorded."""
    lines = [f"import int8lab.grading.records as {PROBE_MODULE}"]
    for index, statement in enumerate(test.statements):
        if statement.role is Role.INPUT:
            lines.append(statement.source)
        elif statement.role is Role.PROBE:
            values = ", ".join(f"{name!r}: {name}" for name in statement.binds)
            lines += [
                "try:",
                _indent(statement.source),
                "except Exception as _int8lab_error:",
                f"    {PROBE_MODULE}.failed({test.grade_id!r}, {index}, _int8lab_error)",
                "else:",
                f"    {PROBE_MODULE}.returned({test.grade_id!r}, {index}, {{{values}}})",
            ]
    return "\n".join(lines) + "\n"


def _indent(source: str) -> str:
    return "\n".join("    " + line for line in source.split("\n"))
