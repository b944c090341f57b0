"""The kernel sandbox on its own: what it blocks, and that it reports what it could not enforce."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from int8lab.grading import sandbox

SCRIPT = Path(sandbox.__file__)
PROBE = """
import json, socket, sys
result = {}
for name, path in [("secret", sys.argv[1]), ("own", sys.argv[2] + "/own.txt")]:
    try:
        open(path, "a").write("x")
        result[name] = "written"
    except OSError as error:
        result[name] = error.errno
try:
    socket.create_connection(("127.0.0.1", 9), timeout=1)
    result["network"] = "connected"
except OSError as error:
    result["network"] = error.errno
try:
    import os
    os.kill(os.getppid(), 0)  # the process that started the sandbox
    result["signal"] = "sent"
except OSError as error:
    result["signal"] = error.errno
print(json.dumps(result))
"""


def _run(tmp_path, *options):
    secret, own, report = tmp_path / "secret.txt", tmp_path / "own", tmp_path / "report.json"
    secret.write_text("hidden tests")
    own.mkdir()
    read_only = ["/usr", "/lib", "/lib64", "/etc", "/proc", "/dev", sys.base_prefix, sys.prefix]
    command = [sys.executable, str(SCRIPT), "--report", str(report), "--rw", str(own), *options]
    for path in read_only:
        command += ["--ro", path]
    command += ["--", sys.executable, "-c", PROBE, str(secret), str(own)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), json.loads(report.read_text())


@pytest.mark.skipif(sandbox.landlock_abi() < 1, reason="this kernel has no Landlock")
def test_only_listed_folders_are_writable_and_there_is_no_network(tmp_path):
    outcome, report = _run(tmp_path)
    assert outcome["own"] == "written"
    assert outcome["secret"] == 13  # EACCES: outside every allowed folder
    assert any(item.startswith("landlock ABI") for item in report["enforced"])
    if "user and network namespaces" in report["enforced"]:
        assert outcome["network"] != "connected"
    if sandbox.landlock_abi() >= 6:
        assert outcome["signal"] == 1  # EPERM: the grader cannot be signalled from inside


def test_what_cannot_be_enforced_is_reported(tmp_path):
    _, report = _run(tmp_path, "--cgroup", str(tmp_path / "no-such-cgroup"), "--processes", "64")
    assert any("pids cgroup" in item for item in report["missing"])
    assert any("process" in item for item in report["missing"] + report["enforced"])
