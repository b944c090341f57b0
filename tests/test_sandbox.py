"""The kernel sandbox on its own: what it blocks, and that it reports what it could not enforce."""

import json
import os
import shlex
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from int8lab.grading import landlock, sandbox, seccomp

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


@pytest.mark.skipif(landlock.landlock_abi() < 1, reason="this kernel has no Landlock")
def test_only_listed_folders_are_writable_and_there_is_no_network(tmp_path):
    outcome, report = _run(tmp_path)
    assert outcome["own"] == "written"
    assert outcome["secret"] == 13  # EACCES: outside every allowed folder
    assert any(item.startswith("landlock ABI") for item in report["enforced"])
    if "user and network namespaces" in report["enforced"]:
        assert outcome["network"] != "connected"
    if landlock.landlock_abi() >= 6:
        assert outcome["signal"] == 1  # EPERM: the grader cannot be signalled from inside


def test_what_cannot_be_enforced_is_reported(tmp_path):
    _, report = _run(tmp_path, "--cgroup", str(tmp_path / "no-such-cgroup"), "--processes", "64")
    assert any("pids cgroup" in item for item in report["missing"])
    assert any("process" in item for item in report["missing"] + report["enforced"])


ATTACK = """
import json, os, socket
found = dict()
for name, family, address in [
    ("unix_listener", socket.AF_UNIX, {unix!r}),
    ("other_kernel", socket.AF_UNIX, {kernel!r}),
    ("tcp_listener", socket.AF_INET, ("127.0.0.1", {port})),
]:
    client = socket.socket(family, socket.SOCK_STREAM)
    client.settimeout(3)
    try:
        client.connect(address)
        found[name] = "connected"
    except OSError as error:
        found[name] = error.strerror
    finally:
        client.close()
try:
    found["sees_grader_process"] = str({pid}) in os.listdir("/proc")
except OSError as error:
    found["sees_grader_process"] = False
print("ATTACK" + json.dumps(found))
"""


def test_a_sandboxed_kernel_reaches_no_socket_port_or_process_outside_its_own(tmp_path):
    """A Unix socket and a TCP port the test listens on, another kernel's channel, the grader's process."""
    import socket
    import tempfile

    import nbformat
    from jupyter_client.manager import KernelManager

    from int8lab.grading import run
    from int8lab.grading.model import Limits

    unix_path = tempfile.mktemp(prefix="int8lab-listen-", dir="/tmp")
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(unix_path)
    unix.listen()
    tcp = socket.create_server(("127.0.0.1", 0))
    other_dir = tempfile.mkdtemp(prefix="int8lab-k", dir="/tmp")
    other = KernelManager(transport="ipc", ip=f"{other_dir}/k")
    other.start_kernel()
    try:
        client = other.client()
        client.start_channels()
        client.wait_for_ready(timeout=60)
        other_socket = f"{other_dir}/k-{other.shell_port}"
        attack = ATTACK.format(unix=unix_path, kernel=other_socket, port=tcp.getsockname()[1], pid=os.getpid())
        # The control: without the sandbox, every attempt succeeds, so the check below can fail.
        unprotected = subprocess.run([sys.executable, "-c", attack], capture_output=True, text=True, timeout=60)
        control = json.loads(unprotected.stdout.split("ATTACK", 1)[1])
        assert control == {
            "unix_listener": "connected",
            "other_kernel": "connected",
            "tcp_listener": "connected",
            "sees_grader_process": True,
        }
        notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(attack)])
        done = run.execute(notebook, tmp_path / "job", Limits(cell_timeout=60))
        text = "".join(o.get("text", "") for o in done.executed.cells[0].outputs)
        assert "ATTACK" in text, done.executed.cells[0].outputs
        sandboxed = json.loads(text.split("ATTACK", 1)[1])
        assert all(value != "connected" for value in sandboxed.values()), sandboxed
        assert sandboxed["sees_grader_process"] is False
    finally:
        other.shutdown_kernel(now=True)
        unix.close()
        tcp.close()
        os.unlink(unix_path)


def test_the_report_names_every_layer(tmp_path):
    import nbformat

    from int8lab.grading import pipeline, report, run
    from int8lab.grading.model import Limits

    done = run.execute(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")]), tmp_path, Limits())
    text = "; ".join(done.sandbox["enforced"] + done.sandbox["missing"])
    namespaces = ("user and network namespaces", "mount namespace", "PID namespace", "IPC namespace")
    for layer in (*namespaces, "tmpfs", "/dev/shm", "landlock", "memory", "keyring", "seccomp filter"):
        assert layer in text.lower() or layer in text, layer
    summary = report.summary([], done.sandbox, 1.0, tmp_path, []).splitlines()
    # On this machine every isolation layer holds, so grading requires each of them of every kernel: a layer whose
    # name in the report changed would silently stop being required.
    assert pipeline.required_layers(done.sandbox) == pipeline.ISOLATION_LAYERS
    for kind in ("sandbox seccomp filter", "sandbox keyring: ", "sandbox memory: "):
        assert sum(line.startswith(kind) for line in summary) == 1, (kind, summary)


def test_no_kernel_outlives_its_job_without_a_cgroup(tmp_path):
    """Without a pids cgroup to empty, the kernel (and a thread it left running) still ends with its job."""
    import time

    import nbformat
    import psutil

    from int8lab.grading import run
    from int8lab.grading.model import Limits

    busy = "import threading, time\nthreading.Thread(target=lambda: [time.sleep(0.1) for _ in iter(int, 1)]).start()"
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(busy)])
    run.execute(notebook, tmp_path / "job", Limits(cell_timeout=30), cgroups=None)
    time.sleep(1)
    left = [p.pid for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])]
    assert left == []


@pytest.mark.parametrize("isolate", [False, True], ids=["plain", "isolated"])
def test_a_kernel_dies_with_the_grading_process_that_started_it(tmp_path, isolate):
    """A grader killed from outside (a lost Dask worker) takes its sandboxed process with it."""
    import time
    import uuid

    import psutil

    marker = f"int8lab-orphan-{uuid.uuid4().hex}"
    folders = {"--isolate": tmp_path / "root", "--workdir": tmp_path / "work", "--sockets": tmp_path / "sockets"}
    options = [item for option, folder in folders.items() for item in (option, str(folder))] if isolate else []
    for path in ["/usr", "/lib", "/lib64", "/etc", "/proc", "/dev", sys.base_prefix, sys.prefix]:
        options += ["--ro", path]
    if isolate:
        for folder in folders.values():
            folder.mkdir()
    sandboxed = [
        sys.executable,
        str(SCRIPT),
        *options,
        "--",
        sys.executable,
        "-c",
        f"import time; time.sleep(120)  # {marker}",
    ]
    grader = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess, time; subprocess.Popen({sandboxed!r}); time.sleep(120)"]
    )

    def sandboxed_processes(started_only=False):
        """Processes of this test's sandbox; ``started_only``: those that exec'd the command (not the launcher)."""
        found = []
        for process in psutil.process_iter(["cmdline"]):
            line = " ".join(process.info["cmdline"] or [])
            if marker in line and not (started_only and SCRIPT.name in line):
                found.append(process)
        return found

    survivors = sandboxed_processes

    deadline = time.monotonic() + 30
    while not sandboxed_processes(started_only=True) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sandboxed_processes(started_only=True), "the sandboxed command never started"
    grader.kill()
    grader.wait()
    deadline = time.monotonic() + 5
    while survivors() and time.monotonic() < deadline:
        time.sleep(0.1)
    left = survivors()
    for process in left:
        process.kill()
    assert left == [], "the sandboxed process outlived the grader that started it"


def test_a_flood_of_output_is_dropped_beyond_the_limit(tmp_path):
    import nbformat

    from int8lab.grading import run
    from int8lab.grading.model import Limits

    flood = "import sys\nfor _ in range(90):\n    sys.stdout.write('x' * (1 << 20))\n    sys.stdout.flush()"
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(flood), nbformat.v4.new_code_cell("2 + 2")])
    done = run.execute(notebook, tmp_path / "job", Limits(cell_timeout=60))
    kept = nbformat.writes(done.executed)
    assert len(kept) < 20 << 20
    assert "was dropped" in kept  # cut while it arrived, not after: the grader never held it all
    assert str(done.status) == "ok" and done.executed.cells[1].execution_count == 2  # the kernel went on


def _sandboxed(tmp_path, code, *args, isolate=False, prefix=()):
    """Run ``code`` under the launcher (plain, or with --isolate), itself started by ``prefix`` if given;
    returns the code's standard output and the launcher's report."""
    report = tmp_path / "report.json"
    options = ["--report", str(report)]
    if isolate:
        folders = {"--isolate": tmp_path / "root", "--workdir": tmp_path / "work", "--sockets": tmp_path / "s"}
        for option, folder in folders.items():
            folder.mkdir()
            options += [option, str(folder)]
    for path in ["/usr", "/lib", "/lib64", "/etc", "/proc", "/dev", sys.base_prefix, sys.prefix]:
        options += ["--ro", path]
    command = [*prefix, sys.executable, str(SCRIPT), *options, "--", sys.executable, "-c", code, *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout, json.loads(report.read_text())


KEY_THIEF = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
serial = int(sys.argv[1])
found = libc.syscall(KEYCTL, 10, -3, b"user", b"int8lab-grader-token", 0)  # KEYCTL_SEARCH, session keyring
buffer = ctypes.create_string_buffer(64)
for key in (serial, found):
    if key > 0 and libc.syscall(KEYCTL, 11, key, buffer, 64) > 0:  # KEYCTL_READ
        print("STOLEN", buffer.value.decode())
print("DONE")
"""

GRADER_WITH_A_KEY = """
import ctypes, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.syscall(KEYCTL, 1, None)  # a session keyring of this test's own, not the developer's
serial = libc.syscall(ADD_KEY, b"user", b"int8lab-grader-token", b"s3cr3t-token", 12, -3)
assert serial > 0, ctypes.get_errno()
sys.exit(subprocess.run([*sys.argv[1:], str(serial)]).returncode)
"""


@pytest.mark.skipif(seccomp.machine() not in seccomp.ARCHES, reason="no syscall table for this machine")
@pytest.mark.parametrize("isolate", [False, True], ids=["plain", "isolated"])
def test_the_graders_session_keys_are_out_of_reach(tmp_path, isolate):
    """The grading process holds a key in its session keyring; the sandboxed command cannot read it."""
    arch = seccomp.ARCHES[seccomp.machine()]
    grader = GRADER_WITH_A_KEY.replace("KEYCTL", str(arch.keys[2])).replace("ADD_KEY", str(arch.keys[0]))
    thief = KEY_THIEF.replace("KEYCTL", str(arch.keys[2]))
    control = subprocess.run(
        [sys.executable, "-c", grader, sys.executable, "-c", thief], capture_output=True, text=True, timeout=60
    )
    assert "STOLEN s3cr3t-token" in control.stdout, control  # unsandboxed, the key is read
    (tmp_path / "grader.py").write_text(grader)
    out, report = _sandboxed(tmp_path, thief, isolate=isolate, prefix=[sys.executable, str(tmp_path / "grader.py")])
    assert "DONE" in out and "STOLEN" not in out, out
    assert any(item.startswith("keyring") for item in report["enforced"]), report


FAMILIES = """
import json, socket
found = {}
for name, family, kind, protocol in [
    ("vsock", 40, socket.SOCK_STREAM, 0),
    ("netlink_uevent", 16, socket.SOCK_RAW, 15),
    ("packet", 17, socket.SOCK_RAW, 0),
    ("netlink_route", 16, socket.SOCK_RAW, 0),
    ("inet", 2, socket.SOCK_STREAM, 0),
    ("unix", 1, socket.SOCK_STREAM, 0),
]:
    try:
        socket.socket(family, kind, protocol).close()
        found[name] = "opened"
    except OSError as error:
        found[name] = error.errno
print(json.dumps(found))
"""
#: What the lab needs (ipykernel's pipe on 127.0.0.1, libzmq's interface list): these stay allowed.
NEEDED = {"unix", "inet", "netlink_route"}


@pytest.mark.skipif(seccomp.machine() not in seccomp.ARCHES, reason="no syscall table for this machine")
def test_only_the_socket_families_the_lab_needs_can_be_opened(tmp_path):
    """AF_VSOCK reaches the hypervisor whatever the network namespace; packet and other netlink sockets too."""
    control = json.loads(subprocess.run([sys.executable, "-c", FAMILIES], capture_output=True, text=True).stdout)
    opened_outside = {name for name, outcome in control.items() if outcome == "opened"}
    assert {"vsock", "unix"} <= opened_outside, control  # else this machine cannot show the door closed
    out, report = _sandboxed(tmp_path, FAMILIES, isolate=True)
    found = json.loads(out)
    assert all(found[name] == "opened" for name in NEEDED), found
    for name in opened_outside - NEEDED:
        assert found[name] == 97, (name, found)  # EAFNOSUPPORT
    assert any(item.startswith("seccomp filter") and "AF_UNIX" in item for item in report["enforced"])


IO_URING = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
params = ctypes.create_string_buffer(120)  # struct io_uring_params
fd = libc.syscall(425, 4, params)  # io_uring_setup
print("OPENED" if fd >= 0 else f"REFUSED {ctypes.get_errno()}")
"""


@pytest.mark.skipif(seccomp.machine() not in seccomp.ARCHES, reason="no syscall table for this machine")
def test_io_uring_is_refused(tmp_path):
    """io_uring opens sockets and files without passing through the filter: it is refused whole."""
    control = subprocess.run([sys.executable, "-c", IO_URING], capture_output=True, text=True).stdout
    if "OPENED" not in control:
        pytest.skip(f"io_uring is off on this machine anyway ({control.strip()})")
    out, _ = _sandboxed(tmp_path, IO_URING, isolate=True)
    assert out.strip() in ("REFUSED 38", "REFUSED 1"), out  # ENOSYS or EPERM


NAMESPACE_MAKERS = """
import ctypes, json, os, shutil, subprocess
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
CLONE_NEWUSER, SIGCHLD = 0x10000000, 17


def in_a_child(attempt):
    # A namespace made leaves its maker without a uid mapping, and so unable to make the next: one child each.
    pid = os.fork()
    if pid == 0:
        os._exit(attempt())
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def outcome(result):
    return 0 if result >= 0 else ctypes.get_errno()


def clone():
    pid = libc.syscall(CLONE, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0)
    if pid == 0:  # the clone, inside its new user namespace
        os._exit(0)
    return outcome(pid)


def setns():  # joining one's own user namespace is refused (EINVAL) without the filter, but not with EPERM
    return outcome(libc.setns(os.open("/proc/self/ns/user", os.O_RDONLY), CLONE_NEWUSER))


found = {
    "unshare": in_a_child(lambda: outcome(libc.unshare(CLONE_NEWUSER))),
    "clone": in_a_child(clone),
    "setns": in_a_child(setns),
}
if shutil.which("unshare"):  # util-linux's command, as a student's notebook would run it
    command = subprocess.run(["unshare", "--user", "true"], capture_output=True, text=True)
    found["unshare command"] = command.stderr.strip() or command.returncode
print(json.dumps(found))
"""


@pytest.mark.skipif(seccomp.machine() not in seccomp.ARCHES, reason="no syscall table for this machine")
def test_a_sandboxed_kernel_can_neither_make_nor_join_a_namespace(tmp_path):
    """Catches a kernel making user namespaces (each counts against the grading user's max_user_namespaces, which
    a loop of them used up) or joining one: unshare, clone and setns each get EPERM."""
    arch = seccomp.ARCHES[seccomp.machine()]
    out, report = _sandboxed(tmp_path, NAMESPACE_MAKERS.replace("CLONE,", f"{arch.clone},"), isolate=True)
    found = json.loads(out)
    assert {found["unshare"], found["clone"], found["setns"]} == {1}, found  # EPERM
    assert found.get("unshare command", "Operation not permitted").endswith("Operation not permitted"), found
    assert any("no new namespace" in item for item in report["enforced"]), report


ORDINARY_PROCESSES = """
import json, multiprocessing, os, subprocess, sys, threading
found = {}
thread = threading.Thread(target=found.setdefault, args=("thread", "ran"))  # glibc tries clone3 first
thread.start()
thread.join()
found["subprocess"] = subprocess.run([sys.executable, "-c", "print('ran')"], capture_output=True, text=True).stdout
spawned = os.posix_spawn(sys.executable, [sys.executable, "-c", "raise SystemExit(5)"], {})
found["posix_spawn"] = os.waitstatus_to_exitcode(os.waitpid(spawned, 0)[1])
pid = os.fork()
if pid == 0:
    os._exit(7)
found["fork"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
for method in ("fork", "spawn"):
    process = multiprocessing.get_context(method).Process(target=os._exit, args=(9,))
    process.start()
    process.join()
    found[f"multiprocessing {method}"] = process.exitcode
print(json.dumps(found))
"""


@pytest.mark.skipif(seccomp.machine() not in seccomp.ARCHES, reason="no syscall table for this machine")
def test_threads_and_child_processes_still_start_in_a_sandboxed_kernel(tmp_path):
    """Catches a filter that refuses what a notebook needs: glibc starts threads and posix_spawn with clone3 and
    falls back to clone only on ENOSYS (not on EPERM); fork and subprocess must not be taken for a namespace."""
    out, _ = _sandboxed(tmp_path, ORDINARY_PROCESSES, isolate=True)
    found = json.loads(out)
    processes = {"posix_spawn": 5, "fork": 7, "multiprocessing fork": 9, "multiprocessing spawn": 9}
    assert found == {"thread": "ran", "subprocess": "ran\n", **processes}, found


def _seccomp_verdict(arch, number: int, flags: int = 0) -> int:
    """What the filter's program answers to system call ``number`` with ``flags`` as args[0] (struct seccomp_data)."""
    data = struct.pack("<iIQ6Q", number, arch.audit, 0, flags, 0, 0, 0, 0, 0)
    accumulator, at = 0, 0
    steps = seccomp.program(arch)
    while True:
        code, jump_true, jump_false, constant = steps[at]
        at += 1
        if code == seccomp.RET_K:
            return constant
        if code == seccomp.LD_ABS_W:
            accumulator = struct.unpack_from("<I", data, constant)[0]
            continue
        tests = {seccomp.JEQ_K: accumulator == constant, seccomp.JGE_K: accumulator >= constant}
        tests[seccomp.JSET_K] = bool(accumulator & constant)
        at += jump_true if tests[code] else jump_false


@pytest.mark.parametrize("machine", sorted(seccomp.ARCHES))
def test_every_namespace_flag_is_refused_on_each_machine(machine):
    """Catches a flag left out of the masks, or a wrong syscall number (aarch64 cannot be run here): each
    CLONE_NEW* flag of unshare and clone is refused, setns too, clone3 is ENOSYS; forks, threads and unshare of
    other flags are allowed."""
    arch = seccomp.ARCHES[machine]
    eperm, enosys = seccomp.RET_ERRNO | 1, seccomp.RET_ERRNO | 38
    newtime, others = 0x80, [0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000]
    for flag in [newtime, *others]:
        assert _seccomp_verdict(arch, arch.unshare, flag) == eperm, hex(flag)
    for flag in others:
        assert _seccomp_verdict(arch, arch.clone, flag | 17) == eperm, hex(flag)
    assert _seccomp_verdict(arch, arch.setns) == eperm
    assert _seccomp_verdict(arch, arch.clone3) == enosys
    fork, thread = 0x01200011, 0x003D0F00  # glibc's flags: CHILD_SETTID|CHILD_CLEARTID|SIGCHLD; pthread_create
    for flags in (fork, thread):
        assert _seccomp_verdict(arch, arch.clone, flags) == seccomp.RET_ALLOW, hex(flags)
    assert _seccomp_verdict(arch, arch.unshare, 0x00000600) == seccomp.RET_ALLOW  # CLONE_FS | CLONE_FILES


DESCRIPTOR_THIEF = """
import json, os
mark = b"LEAKED-TO-THE-GRADER\\x1b[2J"
os.write(1, mark)
os.write(2, mark)
links = {}
for name in os.listdir("/proc/self/fd"):
    try:
        links[name] = os.readlink(f"/proc/self/fd/{name}")
    except OSError:
        continue
for name, link in links.items():  # every pipe and file it holds, ipykernel's copies of 1 and 2 among them
    if link.startswith(("pipe:", "/")):
        try:
            os.write(int(name), mark)
        except OSError:
            pass
print("FDS" + json.dumps(links))
"""

GRADING = """
import json, pathlib, sys
import nbformat
from int8lab.grading import run
from int8lab.grading.model import Limits
job = pathlib.Path(sys.argv[1])
notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(sys.argv[2])])
done = run.execute(notebook, job / "job", Limits(cell_timeout=60))
text = "".join(o.get("text", "") for o in done.executed.cells[0].outputs)
(job / "outcome.json").write_text(json.dumps({"status": str(done.status), "text": text}))
"""


def test_no_descriptor_of_the_grader_reaches_the_kernel(tmp_path):
    """What the kernel writes to 1, 2 or any descriptor it holds never reaches the grader's stdout or stderr."""
    grader = subprocess.Popen(
        [sys.executable, "-c", GRADING, str(tmp_path), DESCRIPTOR_THIEF], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    pipes = {f"pipe:[{os.fstat(stream.fileno()).st_ino}]" for stream in (grader.stdout, grader.stderr)}
    out, err = grader.communicate(timeout=180)
    assert grader.returncode == 0, err.decode(errors="replace")
    outcome = json.loads((tmp_path / "outcome.json").read_text())
    assert outcome["status"] == "ok" and "FDS" in outcome["text"], outcome
    assert b"LEAKED" not in out and b"LEAKED" not in err, (out[-300:], err[-300:])
    links, _ = json.JSONDecoder().raw_decode(outcome["text"].split("FDS", 1)[1])
    assert not pipes & set(links.values()), links
    own = ("/dev/null", "/records.jsonl", "/kernel-stdout.log", "/kernel-stderr.log")
    files = [link for link in links.values() if link.startswith("/")]
    stray = [f for f in files if not f.endswith(own) and not f.startswith(str(tmp_path / "job" / "kernel"))]
    assert stray == [], stray


ORPHANS = """
import os, time
orphans = 0
for _ in range(80):
    try:
        pid = os.fork()
    except OSError:
        continue
    if pid == 0:
        try:
            os.fork()  # the grandchild and its parent exit at once: the grandchild is handed to PID 1
        except OSError:
            os._exit(1)
        os._exit(0)
    orphans += os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    time.sleep(0.01)
try:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    print("ORPHANS", orphans, "then FORKED")
except OSError as error:
    print("ORPHANS", orphans, "then REFUSED", error)
"""


def test_orphans_are_reaped_and_a_later_fork_still_succeeds(tmp_path):
    """A fork bomb's orphans, never waited for by the kernel, do not hold the process limit."""
    import nbformat

    from int8lab.grading import run
    from int8lab.grading.cgroups import PidsCgroups
    from int8lab.grading.model import Limits

    cgroups = PidsCgroups.available()
    if cgroups is None and os.getuid() == 0:
        pytest.skip("no pids cgroup, and RLIMIT_NPROC does not apply to root: no process limit to exhaust")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(ORPHANS)])
    try:
        done = run.execute(notebook, tmp_path / "job", Limits(cell_timeout=60, processes=64), cgroups)
    finally:
        if cgroups:
            cgroups.close()
    text = "".join(o.get("text", "") for o in done.executed.cells[0].outputs)
    assert "PID namespace" in done.sandbox["enforced"], done.sandbox
    assert "ORPHANS 80 then FORKED" in text, (text, done.executed.cells[0].outputs)


SOCKET_FOLDER_FILLER = """
import json, os
from ipykernel.connect import get_connection_file
folder = os.path.dirname(json.load(open(get_connection_file()))["ip"])
written = 0
try:
    with open(os.path.join(folder, "filler"), "wb") as filler:
        for _ in range(48):  # below the file-size limit: only a quota can stop it
            filler.write(b"x" * (1 << 20))
            filler.flush()
            written += 1
    print("WROTE", written, "MiB in", folder)
except OSError as error:
    print("STOPPED after", written, "MiB in", folder, "errno", error.errno)
"""


def test_the_socket_folder_holds_no_more_than_sockets(tmp_path):
    """The socket folder was the host's /tmp, outside the --disk quota: a kernel filled it with 1.3 GiB."""
    import nbformat

    from int8lab.grading import run
    from int8lab.grading.model import Limits

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(SOCKET_FOLDER_FILLER)])
    done = run.execute(notebook, tmp_path / "job", Limits(cell_timeout=60, disk_bytes=16 << 20))
    text = "".join(o.get("text", "") for o in done.executed.cells[0].outputs)
    assert "STOPPED after" in text, (text, done.executed.cells[0].outputs)
    assert int(text.split("errno")[1]) in (28, 122), text  # ENOSPC, EDQUOT
    assert int(text.split("after")[1].split()[0]) <= 16, text


CHILDREN_HOLDING_MEMORY = """
import os, time
children = []
for _ in range(4):
    pid = os.fork()
    if pid == 0:
        try:
            held = b"x" * (350 << 20)  # written, so resident
            time.sleep(3)  # all four hold theirs at once
            os._exit(0)
        except MemoryError:
            os._exit(1)
    children.append(pid)
codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
print("HELD", codes.count(0), codes)
"""


def test_the_memory_limit_holds_for_the_whole_process_tree(tmp_path):
    """Four children of 350 MiB each under a limit of 1280 MiB: each alone fits, all four must not."""
    import nbformat

    from int8lab.grading import run
    from int8lab.grading.cgroups import PidsCgroups
    from int8lab.grading.model import Limits

    cgroups = PidsCgroups.available()
    if cgroups is None or cgroups.memory is None:
        pytest.skip("no memory cgroup on this machine: the report names RLIMIT_AS per process instead")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(CHILDREN_HOLDING_MEMORY)])
    try:
        done = run.execute(notebook, tmp_path / "job", Limits(cell_timeout=60, memory_bytes=1280 << 20), cgroups)
    finally:
        cgroups.close()
    text = "".join(o.get("text", "") for o in done.executed.cells[0].outputs)
    assert "HELD" in text, (text, done.status, done.reason)
    assert int(text.split()[1]) < 4, text
    assert any("for the whole process tree" in item for item in done.sandbox["enforced"]), done.sandbox


SYSTEM_V = """
import ctypes, json, sys
libc = ctypes.CDLL(None, use_errno=True)
key, create = int(sys.argv[1]), sys.argv[2] == "create"
flags = 0o1600 if create else 0  # IPC_CREAT | 0600
found = {"shared memory": libc.shmget(key, 4096 if create else 0, flags) >= 0}
found["message queue"] = libc.msgget(key, flags) >= 0
print(json.dumps(found))
"""


def _system_v(tmp_path, key: int, create: bool) -> dict:
    report = tmp_path / f"report-{create}.json"
    command = [sys.executable, str(SCRIPT), "--report", str(report), "--ro", "/", "--"]
    command += [sys.executable, "-c", SYSTEM_V, str(key), "create" if create else "look"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_system_v_objects_one_kernel_leaves_are_gone_for_the_next(tmp_path):
    """Catches kernels sharing the machine's IPC namespace: a shared memory segment and a message queue that one
    kernel creates under a known key (and never removes) must not be found by the next kernel of the same user."""
    import ctypes
    import random

    key = random.randrange(1 << 20, 1 << 30)
    try:
        assert _system_v(tmp_path, key, create=True) == {"shared memory": True, "message queue": True}
        assert _system_v(tmp_path, key, create=False) == {"shared memory": False, "message queue": False}
    finally:  # what an unprotected run left in this machine's namespace
        libc = ctypes.CDLL(None)
        for identifier, remove in ((libc.shmget(key, 0, 0), libc.shmctl), (libc.msgget(key, 0), libc.msgctl)):
            if identifier >= 0:
                remove(identifier, 0, None)  # IPC_RMID


#: Kernel A of the /dev/shm test: leaves a file there (never removed), then fills a second one until /dev/shm is
#: full, or 48 MiB at most (the host's, on an unprotected run: it is removed again).
SHARED_MEMORY_WRITER = """
import json, os
outcome = {{}}
try:
    with open("/dev/shm/{marker}", "w") as left:
        left.write("kernel A")
    outcome["marker"] = "written"
except OSError as error:
    outcome["marker"] = error.errno
written = 0
try:
    with open("/dev/shm/{marker}-filler", "wb") as filler:
        for _ in range(48):
            filler.write(bytes(1 << 20))
            filler.flush()
            written += 1
except OSError as error:
    outcome["filler errno"] = error.errno
outcome["filler MiB"] = written
if os.path.exists("/dev/shm/{marker}-filler"):
    os.remove("/dev/shm/{marker}-filler")
print(json.dumps(outcome))
"""


def test_each_kernel_has_a_dev_shm_of_its_own_and_of_bounded_size(tmp_path):
    """Catches kernels given the host's /dev/shm, or one they share: a file kernel A leaves in its /dev/shm is
    not in kernel B's, nor in the host's afterwards; and A's /dev/shm holds no more than ``Limits.shm_bytes``."""
    import uuid

    import nbformat

    from int8lab.grading import run
    from int8lab.grading.model import Limits

    marker = f"int8lab-test-{uuid.uuid4().hex}"
    limits = Limits(shm_bytes=16 << 20)

    def printed(job: str, code: str):
        done = run.execute(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)]), tmp_path / job, limits)
        texts = [o.get("text", "") for o in done.executed.cells[0].outputs]
        assert done.status.value == "ok" and texts, (done.reason, done.executed.cells[0].outputs)
        return json.loads(texts[-1])

    try:
        written = printed("a", SHARED_MEMORY_WRITER.format(marker=marker))
        seen = printed("b", f"import json, os\nprint(json.dumps(os.path.exists('/dev/shm/{marker}')))")
        on_the_host = os.path.exists(f"/dev/shm/{marker}")
    finally:  # what an unprotected run left on the host
        Path(f"/dev/shm/{marker}").unlink(missing_ok=True)
    filled = written.pop("filler MiB")
    assert written.pop("marker") == "written"
    assert (seen, on_the_host) == (False, False)
    assert written == {"filler errno": 28}  # ENOSPC
    assert 15 <= filled <= 16  # its 16 MiB, less the page the marker holds (48 on an unbounded one)


@pytest.mark.skipif(landlock.landlock_abi() < 1, reason="this kernel has no Landlock")
def test_without_a_private_root_the_hosts_dev_shm_stays_closed_and_the_report_says_why(tmp_path):
    """Catches a sandbox that, where it cannot build a private /dev/shm, opens the host's to the kernel (shared
    with every other kernel and the grader), or refuses it without a word: the summary must say why a Pool or
    DataLoader workers fail there."""
    marker = f"/dev/shm/int8lab-test-{os.getpid()}"
    code = f"import os\ntry:\n    os.close(os.open({marker!r}, os.O_CREAT | os.O_WRONLY))\n    print('written')\n"
    code += "except OSError as error:\n    print(error.errno)"
    try:
        printed, report = _sandboxed(tmp_path, code)
    finally:
        Path(marker).unlink(missing_ok=True)
    assert printed.strip() == "13"  # EACCES: Landlock
    assert any(item.startswith("/dev/shm: ") and "DataLoader" in item for item in report["missing"]), report


def test_a_kernel_that_cannot_get_a_required_layer_never_runs(tmp_path):
    """Catches a sandbox that goes on with fewer layers than the grader's check kernel got: with this user's
    namespaces used up (by another program of the grading user; a kernel can make none), a launch that requires them is
    refused, says so in its report, and never runs its command."""
    import shutil

    if not shutil.which("unshare"):
        pytest.skip("no unshare command here")
    ran, report = tmp_path / "ran", tmp_path / "report.json"
    launch = [sys.executable, str(SCRIPT), "--report", str(report), "--ro", "/", "--rw", str(tmp_path)]
    launch += ["--require", "user and network namespaces", "--require", "PID namespace", "--isolate", str(tmp_path)]
    launch += ["--", sys.executable, "-c", f"open({str(ran)!r}, 'w')"]
    exhausted = "echo 0 > /proc/sys/user/max_user_namespaces && exec " + " ".join(map(shlex.quote, launch))
    result = subprocess.run(["unshare", "--user", "--map-root-user", "sh", "-c", exhausted], timeout=120)
    assert result.returncode == sandbox.REFUSED
    assert not ran.exists()
    assert json.loads(report.read_text())["refused"] == ["user and network namespaces", "PID namespace"]


NAMESPACE_HOARDER = """
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
made, error = 0, 0
for _ in range(1000):  # one user namespace per child, each held while the child sleeps
    read, write = os.pipe()
    if os.fork() == 0:
        os.write(write, bytes([0 if libc.unshare(0x10000000) == 0 else ctypes.get_errno()]))
        time.sleep(60)
        os._exit(0)
    os.close(write)
    error = os.read(read, 1)[0]
    os.close(read)
    if error:
        break
    made += 1
print("MADE", made, "ERROR", error, flush=True)
time.sleep(60)
"""

HOARDER_THEN_NEXT_KERNEL = """
import json, subprocess, sys
hoarder = subprocess.Popen(json.loads(sys.argv[1]), stdout=subprocess.PIPE, text=True)
print(hoarder.stdout.readline().strip())
following = subprocess.run(json.loads(sys.argv[2]), capture_output=True, text=True, timeout=60)
hoarder.kill()
hoarder.wait()
print("NEXT", following.returncode, following.stdout.strip())
"""


def test_a_kernel_cannot_use_up_the_namespaces_the_next_kernel_needs(tmp_path):
    """Catches the attack on everyone's grading: a kernel making user namespaces until the grading user's
    max_user_namespaces (here 6) is used up, so that the next kernel, which requires its namespaces, is refused.
    Its first unshare gets EPERM, and the next kernel runs."""
    import shutil

    if not shutil.which("unshare"):
        pytest.skip("no unshare command here")

    def launch(name: str, code: str) -> list[str]:
        folders = [tmp_path / name / part for part in ("root", "work", "s")]
        for folder in folders:
            folder.mkdir(parents=True)
        command = [sys.executable, str(SCRIPT), "--report", str(tmp_path / name / "report.json")]
        command += ["--isolate", str(folders[0]), "--workdir", str(folders[1]), "--sockets", str(folders[2])]
        command += ["--require", "user and network namespaces", "--require", "PID namespace"]
        for path in ["/usr", "/lib", "/lib64", "/etc", "/proc", "/dev", sys.base_prefix, sys.prefix]:
            command += ["--ro", path]
        return [*command, "--", sys.executable, "-c", code]

    driver = [sys.executable, "-c", HOARDER_THEN_NEXT_KERNEL]
    driver += [json.dumps(launch("hoarder", NAMESPACE_HOARDER)), json.dumps(launch("next", "print('RAN')"))]
    # Each kernel makes two user namespaces (its own and the nested one over its mounts): with a limit of 6, an
    # unprotected hoarder holds the other 4.
    limited = "echo 6 > /proc/sys/user/max_user_namespaces && exec " + " ".join(map(shlex.quote, driver))
    result = subprocess.run(
        ["unshare", "--user", "--map-root-user", "sh", "-c", limited], capture_output=True, text=True, timeout=120
    )
    assert result.stdout.splitlines() == ["MADE 0 ERROR 1", "NEXT 0 RAN"], (result.stdout, result.stderr)


def test_a_refused_kernel_is_the_graders_fault_and_nothing_runs(tmp_path):
    """Catches a refused launch reported as the student's kernel dying: it is a grader fault, and no cell ran."""
    import nbformat

    from int8lab.grading import run
    from int8lab.grading.model import Limits

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('ran')")])
    done = run.execute(notebook, tmp_path, Limits(required_layers=("a layer no machine has",)))
    assert done.status.value == "error" and done.reason.startswith("grader fault:"), done.reason
    assert not done.executed.cells[0].get("outputs")


def test_a_refused_kernel_runs_once_more_and_only_a_second_refusal_is_a_fault(tmp_path, monkeypatch):
    """Catches a refusal (a layer missing for a moment: namespaces another program used up) failing the job at
    once, or a retry that hides a lasting refusal: the notebook runs again once; refused twice, a grader fault."""
    import json
    from dataclasses import asdict

    import nbformat

    from int8lab.grading import run, workers
    from int8lab.grading.model import Limits, Status

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('ran')")])
    real, launches = run.execute, []

    def refused_first(nb, job_dir, limits, *args, refusals=1):
        launches.append(job_dir)
        if len(launches) <= refusals:  # a real refusal: the sandbox lacks a layer it is required to make
            return real(nb, job_dir, Limits(required_layers=("a layer no machine has",)), *args)
        return run.Run(Status.OK, executed=nb)  # the kernel's run, without a kernel

    monkeypatch.setattr(workers, "REFUSED_RETRY_SECONDS", 0)
    monkeypatch.setattr(run, "execute", refused_first)
    probe = json.dumps(notebook).encode()
    ran = workers.run_probe(probe, asdict(Limits()), tmp_path / "once", None)
    assert ran["status"] == "ok" and ran["reason"].startswith("run again: this kernel's sandbox"), ran["reason"]
    assert len(launches) == 2 and launches[1] != launches[0]  # a folder of its own: cgroups are named after it

    launches.clear()
    monkeypatch.setattr(run, "execute", lambda *args: refused_first(*args, refusals=2))
    ran = workers.run_probe(probe, asdict(Limits()), tmp_path / "twice", None)
    assert ran["status"] == "error" and ran["reason"].startswith("grader fault:"), ran["reason"]
    assert "refused twice" in ran["reason"] and len(launches) == 2
