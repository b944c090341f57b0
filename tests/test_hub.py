"""JupyterHub as the README's recipe sets it up ("On JupyterHub"): a student runs notebook 01 from the wheel's
environment and the shared read-only model cache, without nbgrader's instructor tools; the instructor's formgrader
loads on the graded course.

The hub runs on 127.0.0.1 with the README's configuration block, JupyterHub's DummyAuthenticator (a password) and
SimpleLocalProcessSpawner (a home folder per user: real Unix users may not be makeable here), and the
configurable-http-proxy that .ci/ensure-http-proxy installs from npm. It is driven over HTTP, the REST API and a
kernel's websocket, no browser: on a busy 2-core machine, fewer moving parts wait on each other.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import time
import uuid
import venv
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import websocket
from browser_support import end_session, free_port
from read_only import require_read_only_mounts

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.hub

STUDENT, INSTRUCTOR = "ann", "prof"
#: nbgrader's instructor tools, as the README turns them off in the students' environment.
LAB_PLUGINS_OFF = (
    "@jupyter/nbgrader:formgrader",
    "@jupyter/nbgrader:create-assignment",
    "@jupyter/nbgrader:course-list",
)
SERVER_EXTENSIONS_OFF = ("nbgrader.server_extensions.formgrader", "nbgrader.server_extensions.course_list")
#: How long a server may take to start, or a cell to run: seconds when idle, minutes with the suite beside it.
PATIENCE_S = 300
#: The cells of notebooks/01_weights/weights.ipynb that the student runs: the setup, the trained network, its plot.
FIRST_CELLS = 3


def _readme_hub_block() -> str:
    """The README's jupyterhub_config.py block, as an instructor copies it."""
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"\n( *)```python\n(\1# jupyterhub_config\.py.*?\n)\1```\n", readme, re.DOTALL)
    assert found, "README.md has no ```python block starting '# jupyterhub_config.py'"
    return textwrap.dedent(found.group(2))


def _student_environment(base: Path) -> Path:
    """The README's students' environment: int8lab from a wheel of the checkout, instructor tools off.

    The locked packages are borrowed from this environment's site-packages (a path: its .pth files, among them the
    editable install of the checkout, stay out), so that no test installs from the network; share/jupyter
    (JupyterLab's application and extensions) is linked, etc/jupyter copied, since the README's commands edit it.
    """
    checkout, wheels, env = base / "checkout", base / "wheels", base / "student-env"
    # A clean copy: a build/ folder left in the repository would otherwise fill the wheel.
    shutil.copytree(ROOT, checkout, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "graded"))
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels)]
    subprocess.run([*build, str(checkout)], check=True, capture_output=True, timeout=600)
    shutil.rmtree(checkout)
    (wheel,) = wheels.glob("int8lab-*.whl")
    venv.create(env, with_pip=False)
    site = next((env / "lib").glob("python3*/site-packages"))
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    python = env / "bin" / "python"
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=600)
    (env / "share").mkdir(exist_ok=True)
    (env / "share" / "jupyter").symlink_to(Path(sys.prefix) / "share" / "jupyter")
    shutil.copytree(Path(sys.prefix) / "etc" / "jupyter", env / "etc" / "jupyter")
    # The README's commands, through the modules behind `jupyter labextension` and `jupyter server extension`.
    for command in (
        ["jupyterlab.labextensions", "disable", "--level=sys_prefix", *LAB_PLUGINS_OFF],
        ["jupyterlab.labextensions", "lock", "--level=sys_prefix", *LAB_PLUGINS_OFF],
        ["jupyter_server.extension.serverextension", "disable", "--sys-prefix", *SERVER_EXTENSIONS_OFF],
    ):
        subprocess.run([str(python), "-m", *command], check=True, capture_output=True, timeout=300)
    launcher = env / "bin" / "jupyterhub-singleuser"
    launcher.write_text(f"#!{python}\nimport sys\nfrom jupyterhub.singleuser import main\nsys.exit(main())\n")
    launcher.chmod(0o755)
    return env


def _shared_cache(base: Path) -> Path:
    """The model cache as the instructor leaves it: the checkpoint and the digits that the instructor's environment
    made (the session's cache, filled by the float_net fixture). Students' servers see it read-only (_hub_config)."""
    from int8lab import cache_dir

    cache = base / "int8lab-cache"
    shutil.copytree(cache_dir(), cache, ignore=shutil.ignore_patterns("*.lock", "*.tmp*", "simulated"))
    return cache


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def _hub_config(
    base: Path, student_env: Path, cache: Path, course: Path, admin_token: str, password: str
) -> tuple[str, str]:
    """The README's block with this machine's paths, then what a test hub needs: ports, a dummy authenticator,
    home folders, and the shared cache mounted read-only for students (root, which the suite may run as, ignores
    file modes); and the hub's address."""
    found = subprocess.run([str(ROOT / ".ci" / "ensure-http-proxy")], capture_output=True, text=True, timeout=600)
    proxy = found.stdout.strip()
    assert found.returncode == 0 and os.access(proxy, os.X_OK), f"no configurable-http-proxy: {found.stderr[-1000:]}"
    port, hub_port, api_port = free_port(), free_port(), free_port()
    settings = {
        "STUDENT_ENV": str(student_env),
        "INSTRUCTOR_ENV": sys.prefix,
        "COURSE": str(course),
        "CACHE": str(cache),
        "INSTRUCTORS": {INSTRUCTOR},
    }
    test_part = f"""
# The test hub's own settings, after the README's block.
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from read_only import read_only_command

{chr(10).join(f"{name} = {value!r}" for name, value in settings.items())}
c.Spawner.environment = {{"INT8LAB_CACHE": CACHE, "OMP_NUM_THREADS": "1"}}
readme_hook = c.Spawner.pre_spawn_hook


def test_hook(spawner):
    readme_hook(spawner)
    if spawner.user.name not in INSTRUCTORS:
        spawner.cmd = read_only_command(CACHE, spawner.cmd)


c.Spawner.pre_spawn_hook = test_hook
# The servers run as this user (root in CI), or as root in the namespace of the read-only mount.
c.Spawner.args = ["--allow-root"]
c.Spawner.start_timeout = c.Spawner.http_timeout = {PATIENCE_S}
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = {str(base / "home" / "{username}")!r}
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = {password!r}
c.Authenticator.allowed_users = {{{STUDENT!r}, {INSTRUCTOR!r}}}
c.JupyterHub.bind_url = "http://127.0.0.1:{port}"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{hub_port}"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{api_port}"
c.ConfigurableHTTPProxy.command = [{proxy!r}]
c.ConfigurableHTTPProxy.pid_file = {str(base / "proxy.pid")!r}
c.JupyterHub.db_url = "sqlite:///{base / "jupyterhub.sqlite"}"
c.JupyterHub.cookie_secret_file = {str(base / "cookie_secret")!r}
c.JupyterHub.services = [{{"name": "hub-test", "api_token": {admin_token!r}}}]
c.JupyterHub.load_roles = [{{"name": "hub-test", "scopes": ["admin:servers", "read:users"], "services": ["hub-test"]}}]
"""
    return _readme_hub_block() + test_part, f"http://127.0.0.1:{port}"


@dataclass
class Hub:
    url: str
    admin_token: str
    password: str
    student_env: Path
    cache: Path
    home: Path
    log: Path

    def admin(self, method: str, path: str, **kwargs) -> requests.Response:
        headers = {"Authorization": f"token {self.admin_token}"}
        return requests.request(method, f"{self.url}/hub/api/{path}", headers=headers, timeout=60, **kwargs)


@pytest.fixture(scope="module")
def hub(tmp_path_factory, float_net):
    """A JupyterHub on 127.0.0.1, configured by the README's block; stopped with every server it started."""
    require_read_only_mounts()
    base = tmp_path_factory.mktemp("hub")
    student_env = _student_environment(base)
    cache = _shared_cache(base)
    # Outside the instructor's home, as /srv/int8lab/graded in the README: a server rooted at the home folder
    # shows formgrader's error page.
    course = base / "srv" / "int8lab" / "graded"
    course.mkdir(parents=True)
    # What `int8lab grade --out graded` writes first: the course folder's configuration.
    from int8lab.grading.course import write_config

    write_config(course)
    # And the source of an assignment, which formgrader lists (its gradebook, which formgrader creates, needs
    # nbgrader's `alembic` on the server's PATH).
    (course / "source" / "01_weights").mkdir(parents=True)
    shutil.copy(ROOT / "solutions" / "01_weights" / "weights.ipynb", course / "source" / "01_weights")
    (base / "home" / STUDENT).mkdir(parents=True)
    shutil.copy(ROOT / "notebooks" / "01_weights" / "weights.ipynb", base / "home" / STUDENT / "weights.ipynb")
    admin_token, password = secrets.token_hex(16), secrets.token_hex(8)
    config, url = _hub_config(base, student_env, cache, course, admin_token, password)
    (base / "jupyterhub_config.py").write_text(config)
    log = base / "jupyterhub.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(base / "jupyterhub_config.py")],
            cwd=base,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    hub = Hub(url, admin_token, password, student_env, cache, base / "home", log)
    try:
        _wait(lambda: process.poll() is None and _answers(f"{url}/hub/api"), 120, "the hub to answer", log, process)
        yield hub
    finally:
        # Both at once: a server takes seconds to stop its kernels.
        with ThreadPoolExecutor(2) as stopping:
            list(stopping.map(lambda user: _stop_server(hub, user), (STUDENT, INSTRUCTOR)))
        end_session(process)
        _end_proxy(base / "proxy.pid")


def _stop_server(hub: Hub, user: str) -> None:
    try:
        hub.admin("DELETE", f"users/{user}/server")
    except requests.RequestException:
        pass  # the hub is gone already: its servers went with it (cleanup_servers)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=10).status_code == 200
    except requests.RequestException:
        return False


def _wait(ready, seconds: float, what: str, log: Path, process=None) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the hub exited while waiting for {what}: {log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {seconds} s for {what}: {log.read_text()[-4000:]}")
        time.sleep(0.5)


def _end_proxy(pid_file: Path) -> None:
    """The proxy the hub started, if the hub's own shutdown left it running (it runs in a session of its own)."""
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, 15)
    except (OSError, ValueError):
        pass


@dataclass
class User:
    """A user logged in with the password, holding an API token of their own, with a running server."""

    name: str
    url: str
    token: str

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.server(path), headers=self.headers, timeout=120, **kwargs)

    def post(self, path: str, body: dict) -> requests.Response:
        return requests.post(self.server(path), json=body, headers=self.headers, timeout=120)

    def server(self, path: str) -> str:
        return f"{self.url}/user/{self.name}/{path.lstrip('/')}"

    @property
    def headers(self) -> dict:
        return {"Authorization": f"token {self.token}"}


def _log_in(hub: Hub, name: str) -> str:
    """The login form with the password, then a token made with the login's cookie: what the user's browser could do."""
    session = requests.Session()
    session.get(f"{hub.url}/hub/login", timeout=60).raise_for_status()
    form = {"username": name, "password": hub.password, "_xsrf": _cookie(session, "_xsrf")}
    # With the session's cookies, as a browser sends it: without its _xsrf cookie the hub signs a new token, with
    # the current second in it, and refused the form (403) whenever the page and the post fell in two seconds.
    refused = session.post(f"{hub.url}/hub/login", data={**form, "password": "wrong"}, timeout=60)
    assert "Invalid username or password" in refused.text, "the hub let a wrong password in"
    answer = session.post(f"{hub.url}/hub/login", data=form, timeout=60, allow_redirects=False)
    assert answer.status_code == 302, f"{name} could not log in: {answer.status_code} {answer.text[-500:]}"
    xsrf = {"X-XSRFToken": _cookie(session, "_xsrf")}
    made = session.post(f"{hub.url}/hub/api/users/{name}/tokens", json={"note": "hub test"}, headers=xsrf, timeout=60)
    assert made.status_code == 201, made.text
    return made.json()["token"]


def _cookie(session: requests.Session, name: str) -> str:
    """The hub's cookie ``name`` (the jar may hold one per path)."""
    values = [cookie.value for cookie in session.cookies if cookie.name == name and cookie.path.startswith("/hub")]
    assert values, f"the hub set no {name} cookie"
    return values[-1]


@pytest.fixture(scope="module")
def users(hub) -> dict[str, User]:
    """The student and the instructor logged in, their servers started together and waited for."""
    logged = {name: User(name, hub.url, _log_in(hub, name)) for name in (STUDENT, INSTRUCTOR)}
    for user in logged.values():
        started = requests.post(f"{hub.url}/hub/api/users/{user.name}/server", headers=user.headers, timeout=60)
        assert started.status_code in (201, 202), started.text
    for user in logged.values():
        _wait(lambda user=user: _server_ready(hub, user), PATIENCE_S, f"{user.name}'s server", hub.log)
    return logged


def _server_ready(hub: Hub, user: User) -> bool:
    model = requests.get(f"{hub.url}/hub/api/users/{user.name}", headers=user.headers, timeout=60).json()
    return bool(model.get("servers", {}).get("", {}).get("ready"))


def _run_cells(user: User, kernel_id: str, sources: list[str]) -> list[dict]:
    """Each source run in turn on the kernel, through its websocket; every output message, per cell."""
    url = user.server(f"api/kernels/{kernel_id}/channels").replace("http://", "ws://")
    connection = websocket.create_connection(url, header=[f"Authorization: token {user.token}"], timeout=PATIENCE_S)
    results = []
    try:
        for source in sources:
            msg_id = uuid.uuid4().hex
            request = {
                "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": user.name, "version": "5.3"},
                "parent_header": {},
                "metadata": {},
                "content": {"code": source, "silent": False, "store_history": True, "allow_stdin": False},
                "channel": "shell",
                "buffers": [],
            }
            request["header"]["session"] = "hub-test"
            connection.send(json.dumps(request))
            outputs = []
            while True:
                message = json.loads(connection.recv())
                if message.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind = message["msg_type"]
                if kind in ("stream", "error", "display_data", "execute_result"):
                    outputs.append({"type": kind, **message["content"]})
                if kind == "status" and message["content"]["execution_state"] == "idle":
                    break
            results.append(outputs)
    finally:
        connection.close()
    return results


def _text(outputs: list[dict]) -> str:
    lines = [o["text"] for o in outputs if o["type"] == "stream"]
    lines += [f"{o['ename']}: {o['evalue']}" for o in outputs if o["type"] == "error"]
    return "".join(lines)


PROBE = """import importlib.util, json, os, sys
import int8lab
checkout = os.path.dirname(os.path.dirname(int8lab.__file__))
print(json.dumps({"int8lab": int8lab.__file__, "path": sys.path, "cwd": os.getcwd(),
                  "importable": importlib.util.find_spec("solutions") is not None,
                  "beside": os.path.exists(os.path.join(checkout, "solutions"))}))
"""


def test_student_runs_notebook_01_from_the_wheel_and_the_shared_read_only_cache(hub, users):
    """The first cells of notebook 01 load the instructor's model from the shared cache (nothing written there),
    in a kernel whose int8lab is the wheel's and whose path holds nothing of the checkout (so no solutions/)."""
    student = users[STUDENT]
    before = _snapshot(hub.cache)
    opened = student.get("api/contents/weights.ipynb")
    assert opened.status_code == 200, opened.text[-500:]
    code = [cell for cell in opened.json()["content"]["cells"] if cell["cell_type"] == "code"][:FIRST_CELLS]
    session = student.post(
        "api/sessions", {"path": "weights.ipynb", "type": "notebook", "name": "", "kernel": {"name": "python3"}}
    )
    assert session.status_code == 201, session.text
    setup, model, plot, probe = _run_cells(
        student, session.json()["kernel"]["id"], [c["source"] for c in code] + [PROBE]
    )
    for outputs in (setup, model, plot):
        assert not [o for o in outputs if o["type"] == "error"], _text(outputs)
    assert re.search(r"float network: 9\d\.\d\d% test accuracy on digits", _text(model)), _text(model)
    assert any("image/png" in o.get("data", {}) for o in plot), plot
    assert _snapshot(hub.cache) == before, "a student's kernel wrote into the shared model cache"
    seen = json.loads(_text(probe))
    assert Path(seen["int8lab"]).is_relative_to(hub.student_env), seen["int8lab"]
    # An editable install leaves the path alone (a finder maps int8lab to the checkout) but puts the package in the
    # checkout, beside solutions/.
    assert not seen["beside"], f"solutions/ lies beside the student's int8lab: {seen['int8lab']}"
    # The checkout's folder (what the editable install adds) or any folder holding a solutions/: the borrowed
    # site-packages of the checkout's .venv stand for the packages the students' environment installs itself.
    folders = [Path(seen["cwd"], entry).resolve() for entry in seen["path"]]  # "" is the kernel's own folder
    leaks = [folder for folder in folders if folder == ROOT or (folder / "solutions").exists()]
    assert leaks == [] and not seen["importable"], f"the checkout is on the student's path: {leaks}"
    assert Path(seen["cwd"]) == hub.home / STUDENT


def _page_config(user: User) -> dict:
    page = user.get("lab")
    assert page.status_code == 200, page.text[-500:]
    found = re.search(r'<script id="jupyter-config-data" type="application/json">(.*?)</script>', page.text, re.S)
    assert found, page.text[-1000:]
    return json.loads(found.group(1))


def test_student_has_no_instructor_tool_and_the_instructor_has_them(users):
    """nbgrader's Formgrader, Create Assignment and course list are disabled and locked in the student's JupyterLab,
    and their pages do not exist on the student's server; the instructor keeps them."""
    student, instructor = users[STUDENT], users[INSTRUCTOR]
    config = _page_config(student)
    for plugin in LAB_PLUGINS_OFF:
        assert plugin in config["disabledExtensions"] and plugin in config["lockedExtensions"], plugin
    assert student.get("formgrader").status_code == 404
    assert student.get("formgraders").status_code == 404  # the course list's
    assert not set(LAB_PLUGINS_OFF) & set(_page_config(instructor)["disabledExtensions"])


def test_instructor_formgrader_loads_on_the_graded_course(hub, users):
    """The instructor's formgrader opens on graded/ (no "course directory root is not a subdirectory of the notebook
    server root" error page) and its API answers from that course's gradebook."""
    instructor = users[INSTRUCTOR]
    page = instructor.get("formgrader")
    said = [line for line in hub.log.read_text().splitlines() if "ERROR" in line and "formgrader" in line.lower()]
    said += [line for line in hub.log.read_text().splitlines() if "course directory root" in line]
    assert page.status_code == 200 and "formgrader encountered an error" not in page.text, (page.status_code, said)
    assert "Manage Assignments" in page.text
    assignments = instructor.get("formgrader/api/assignments")
    assert assignments.status_code == 200, assignments.text[-500:]
    assert [assignment["name"] for assignment in assignments.json()] == ["01_weights"], assignments.text[-500:]


def test_readme_turns_off_the_extensions_that_this_test_turns_off():
    """The students' environment here gets the README's three commands (through their modules): same names."""
    readme = (ROOT / "README.md").read_text()
    plugins, extensions = " ".join(LAB_PLUGINS_OFF), " ".join(SERVER_EXTENSIONS_OFF)
    assert f"jupyter labextension disable --level=sys_prefix {plugins}\n" in readme
    assert f"jupyter labextension lock --level=sys_prefix {plugins}\n" in readme
    assert f"jupyter server extension disable --sys-prefix {extensions}\n" in readme
