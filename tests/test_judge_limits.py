"""What the judge trusts of a record, and what a record may cost it.

The records come from the student's own process: each test here forges what a student's code could
write, and checks that the judge scores only what the same honest code would score.
"""

import json

import pytest
import torch

from int8lab.grading import judge as judge_module
from int8lab.grading import records
from int8lab.grading.judge import Judge
from int8lab.grading.records import Records
from notebook_harness import source_notebook

HIDDEN = "### BEGIN HIDDEN TESTS\n{}\n### END HIDDEN TESTS"
SOURCE = source_notebook(
    ("setup", "setup", "import torch\nfrom int8lab.checks import check_close, check_true"),
    ("solution", "impl", "def double(x):\n    return 2 * x"),
    (
        "test",
        "each_value",
        '"""double on three values."""\nvalues = [torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0)]\n'
        "results = [double(v) for v in values]\n"
        + HIDDEN.format("for v, got in zip(values, results):\n    check_close('double(v)', got, 2 * v)"),
    ),
    (
        "test",
        "sum_of_doubles",
        '"""double on a tensor, and the sum the judge computes from it."""\nx = torch.arange(3.0)\n'
        "y = double(x)\ntotal = float(y.sum())\n" + HIDDEN.format("check_true(total == 6.0, f'total {total}')"),
    ),
    (
        "test",
        "count",
        '"""double on a count, which the checks use."""\nn = double(2)\n'
        + HIDDEN.format("check_true(len(torch.zeros(int(n))) == 4, 'wrong count')"),
    ),
)


@pytest.fixture(scope="module")
def source_judge():
    return Judge.from_source(SOURCE)


def _entry(cell, statement, **values):
    return (
        cell,
        statement,
        {"cell": cell, "statement": statement, "values": {k: records.encode(v) for k, v in values.items()}},
    )


def _honest(**changes):
    """The reference's records in the order a kernel writes them, with ``changes`` {name: value} applied."""
    entries = [
        _entry("each_value", 2, results=[torch.tensor(2.0), torch.tensor(4.0), torch.tensor(6.0)]),
        _entry("sum_of_doubles", 2, y=torch.tensor([0.0, 2.0, 4.0])),
        _entry("sum_of_doubles", 3, total=6.0),
        _entry("count", 1, n=4),
    ]
    for index, (cell, statement, record) in enumerate(entries):
        for name, value in changes.items():
            if name in record["values"]:
                entries[index] = _entry(cell, statement, **{name: value})
    return entries


def _verdicts(source_judge, entries, dropped=0):
    return {grade_id: (v.score, v.message) for grade_id, v in source_judge.judge(Records(entries, dropped)).items()}


def test_the_honest_records_earn_every_point(source_judge):
    assert all(score == 2 for score, _ in _verdicts(source_judge, _honest()).values())


def test_a_shortened_list_fails_and_says_what_is_missing(source_judge):
    """A probe whose inputs the student's code shortened records one result instead of three."""
    (score, message) = _verdicts(source_judge, _honest(results=[torch.tensor(2.0)]))["each_value"]
    assert score == 0 and "results is a list of 1 item where the test expects 3 items" in message
    (score, message) = _verdicts(source_judge, _honest(results=[]))["each_value"]
    assert score == 0 and "a list of 0 items" in message


def test_a_second_record_of_a_statement_makes_its_test_score_zero_whichever_comes_first(source_judge):
    forged = _entry("each_value", 2, results=[])
    honest = _honest()
    for entries in ([forged, *honest], [*honest, forged], [honest[0], forged, *honest[1:]]):
        verdicts = _verdicts(source_judge, entries)
        assert verdicts["each_value"][0] == 0 and verdicts["each_value"][1].startswith("records tampered")
        assert verdicts["count"] == (2, "")  # the other tests are judged as usual


def test_a_record_out_of_the_notebooks_order_or_of_no_probe_is_tampered(source_judge):
    honest = _honest()
    late = [honest[1], honest[2], honest[3], honest[0]]  # each_value's record written after count ran
    assert _verdicts(source_judge, late)["each_value"][1].startswith("records tampered")
    not_a_probe = [*honest, _entry("count", 0, n=4)]
    assert _verdicts(source_judge, not_a_probe)["count"][1].startswith("records tampered")


def test_a_derived_value_is_recomputed_and_never_taken_from_its_record(source_judge):
    """total = float(y.sum()) calls no student code: the judge computes it from y, whatever the kernel wrote."""
    assert (source_judge.tests[1].grade_id, 3) in source_judge.recomputed
    score, message = _verdicts(source_judge, _honest(y=torch.zeros(3)))["sum_of_doubles"]
    assert score == 0 and "total 0.0" in message  # computed from y here; the record's 6.0 is not trusted
    unrecorded = _honest()
    unrecorded[1] = ("sum_of_doubles", 2, {"values": {"y": {"object": "Liar"}}})
    score, message = _verdicts(source_judge, unrecorded)["sum_of_doubles"]
    assert score == 0 and "Liar" in message


def test_a_recorded_integer_beyond_what_a_kernel_records_is_refused(source_judge):
    with pytest.raises(records.RecordError):
        records.decode(2**64)
    forged = _honest()
    forged[3] = ("count", 1, json.loads('{"values": {"n": ' + str(10**40) + "}}"))
    score, message = _verdicts(source_judge, forged)["count"]
    assert score == 0 and "could not be read back" in message


def test_lines_that_are_not_records_cost_no_parse_and_records_are_capped(monkeypatch):
    parsed = []
    monkeypatch.setattr(records.json, "loads", lambda line: parsed.append(line) or json.JSONDecoder().decode(line))
    assert records.read_records("\n" * (2 << 20) + " {}\n" * 1000).entries == []
    assert parsed == []
    monkeypatch.setattr(records, "MAX_RECORD_LINES", 3)
    text = "\n".join(json.dumps(record) for _, _, record in _honest()) + "\n"
    read = records.read_records(text * 2)
    assert len(read.entries) == 3 and read.dropped == 5


def test_a_check_that_runs_too_long_costs_only_its_own_test(monkeypatch):
    monkeypatch.setattr(judge_module, "TEST_CPU_SECONDS", 1)
    endless = Judge.from_source(
        source_notebook(
            ("setup", "setup", "from int8lab.checks import check_true"),
            ("solution", "impl", "def count(n):\n    return n"),
            ("test", "loops", '"""loops."""\nn = count(5)\n' + HIDDEN.format("while n > 0:\n    n = n + 0")),
            ("test", "fine", '"""fine."""\nm = count(5)\n' + HIDDEN.format("check_true(m == 5, 'no')")),
        )
    )
    entries = [_entry("loops", 1, n=5), _entry("fine", 1, m=5)]
    verdicts = {g: (v.score, v.message) for g, v in endless.judge(Records(entries)).items()}
    assert verdicts["loops"][0] == 0 and "s of CPU" in verdicts["loops"][1]
    assert verdicts["fine"] == (2, "")


def test_an_allocation_beyond_the_judges_memory_costs_only_its_own_test(source_judge, monkeypatch):
    """n = 2**28 makes the check allocate 1 GiB: under a 256 MiB allowance, that test fails with a
    memory error, and the other tests are judged as usual."""
    monkeypatch.setattr(judge_module, "JUDGE_MEMORY_BYTES", 256 << 20)
    verdicts = _verdicts(source_judge, _honest(n=2**28))
    assert verdicts["count"][0] == 0 and "memory" in verdicts["count"][1].lower()
    assert verdicts["each_value"] == (2, "")
