"""The model-selection page in a real Airflow: `make airflow` on a loopback port, a run triggered
through the REST API, and the page read in headless Chromium after logging in through the UI's form.

The browser tests skip, saying why, where Chromium, ChromeDriver or Selenium is missing (`make test`
installs them); the run view's HTTP tests and its pure functions run without them.
"""

from __future__ import annotations

import datetime as dt
import html.parser
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from airflow_env import DAG_ID, PROJECT_ROOT, airflow_environment
from conftest import write_image_folders

from model_selection.backends.local import LocalSageMakerClient
from model_selection.lanes import RunState, job_view, lanes, launch_text, render_run_page
from model_selection.results import ResultsStore
from model_selection.ui import UILinks

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
TINY = {"pretrained": "false", "image_size": "16", "batch_size": "8", "train_only_top_layer": "False"}
HOSTILE_MODEL = '<img src=x onerror="window.injected=1">'
HOSTILE_REASON = '<script>window.injected=2</script> out of memory'
HOSTILE_DATASET = '<b onmouseover="window.injected=3">pets</b>'
# Credentials the API server and tasks can see; none may reach the page.
CANARIES = {
    "AWS_ACCESS_KEY_ID": "AKIA" + secrets.token_hex(8).upper(),
    "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30),
    "AWS_SESSION_TOKEN": secrets.token_urlsafe(40),
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Airflow:
    """A running `make airflow` and a REST client for it."""

    def __init__(self, url: str, root: Path):
        self.url, self.home, self.results, self.jobs, self.data = (
            url, root / "home", root / "results", root / "jobs", root / "data")

    @property
    def password(self) -> str:
        return json.loads((self.home / "simple_auth_manager_passwords.json.generated").read_text())["admin"]

    def request(self, path: str, body: dict | None = None, token: str | None = None,
                method: str | None = None) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
        request = urllib.request.Request(self.url + path, data=None if body is None else json.dumps(body).encode(),
                                         headers=headers, method=method or ("GET" if body is None else "POST"))
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()
        except (urllib.error.URLError, ConnectionError):
            return 0, b""

    def token(self) -> str:
        status, body = self.request("/auth/token", {"username": "admin", "password": self.password})
        assert status in (200, 201), body
        return json.loads(body)["access_token"]

    def api(self, path: str, body: dict | None = None, method: str | None = None) -> dict:
        # SQLite (standalone's database) answers 500 when the write lock stays busy past its timeout: the
        # action log's commit fails before the endpoint runs, so nothing changed and a retry is safe.
        for _ in range(5):
            status, answer = self.request(f"/api/v2{path}", body, self.token(), method)
            if status != 500:
                break
            time.sleep(2)
        assert status in (200, 201), (path, status, answer[:500])
        return json.loads(answer)


def end_run(airflow, path: str) -> None:
    """Fail a test's run and stop the local jobs it left in progress."""
    airflow.api(path, {"state": "failed"}, method="PATCH")
    client = LocalSageMakerClient(airflow.jobs)
    for name in client.store.tuning_job_names():
        if client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)["HyperParameterTuningJobStatus"] == "InProgress":
            client.stop_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)


def wait_until(condition, timeout: float, what: str, process: subprocess.Popen, log: Path):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            pytest.fail(f"make airflow exited ({process.returncode}) while waiting for {what}:\n{log.read_text()[-4000:]}")
        if result := condition():
            return result
        time.sleep(2)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    root = tmp_path_factory.mktemp("ui")
    port = free_port()
    instance = Airflow(f"http://127.0.0.1:{port}", root)
    for channel, seed in (("training", 1), ("validation", 2), ("test", 3)):
        write_image_folders(instance.data / channel, classes=3, per_class=8 if channel == "training" else 4, seed=seed)
    environment = {**airflow_environment(instance.home, instance.jobs, instance.results), **CANARIES,
                   "AIRFLOW__API__HOST": "127.0.0.1"}
    log = root / "make-airflow.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            ["make", "-s", "airflow", f"AIRFLOW_HOME_DIR={instance.home}", f"AIRFLOW_PORT={port}"],
            cwd=PROJECT_ROOT, env=environment, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        wait_until(lambda: instance.request("/api/v2/monitor/health")[0] == 200, 600, "the API server", process, log)
        wait_until(lambda: instance.request(f"/api/v2/dags/{DAG_ID}", token=instance.token())[0] == 200, 600,
                   "the DAG to be parsed", process, log)
        instance.log, instance.process = log, process
        yield instance
    finally:  # standalone's scheduler, executor workers, triggerer, DAG processor and API server
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(process.pid, signal.SIGKILL)  # whatever did not stop on SIGTERM
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def finished_run(airflow) -> dict:
    """A run on the local backend through the scheduler and triggerer: one model trains, one crashes."""
    conf = {
        "model_ids": ["test_resnet", "test_convnext"],  # test_convnext cannot take 16-pixel images
        "dataset": {"name": "tiny", **{channel: str(airflow.data / channel) for channel in ("training", "validation", "test")}},
        "hyperparameters": TINY,
        "epochs": 2,
        "speed_rounds": 1,
    }
    run = airflow.api(f"/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": conf})
    path = f"/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}"
    final = wait_until(lambda: (state := airflow.api(path))["state"] in ("success", "failed") and state, 1200,
                       "the DAG run to finish", airflow.process, airflow.log)
    instances = airflow.api(f"{path}/taskInstances?limit=100")["task_instances"]
    rows = ResultsStore(str(airflow.results)).read_latest(dataset="tiny")
    assert rows, airflow.log.read_text()[-3000:]
    # Rows as a remote job's failure or another tool could write them: the page must show them as text.
    hostile = {"status": "Failed", "config_hash": rows[0]["config_hash"], "finished_at": "2000-01-01T00:00:00+00:00"}
    ResultsStore(str(airflow.results)).append([
        {**hostile, "dataset": "tiny", "model_id": HOSTILE_MODEL, "failure_reason": HOSTILE_REASON},
        {**hostile, "dataset": HOSTILE_DATASET, "model_id": "resnet18", "failure_reason": "-"},
    ])
    return {"run": final, "instances": instances, "rows": rows}


def settled(browser, read, timeout: float = 120):
    """`read()`'s value once it ran without meeting a stale or missing element: the UI re-renders as it
    loads (and the run view reloads itself), so every read finds its elements anew on each try."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    ignored = (StaleElementReferenceException, NoSuchElementException)
    return WebDriverWait(browser, timeout, ignored_exceptions=ignored).until(lambda _: (read(),))[0]


@pytest.fixture(scope="module")
def browser(airflow):
    """Headless Chromium, logged in through Airflow's own login form."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver (make test installs them with apt-get where it can)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (requirements-test.txt)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    driver.get(f"{airflow.url}/dags")  # Airflow sends a new browser to its login form
    WebDriverWait(driver, 120).until(ready.presence_of_element_located((By.NAME, "username"))).send_keys("admin")
    driver.find_element(By.NAME, "password").send_keys(airflow.password)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(driver, 120).until(lambda _: "/auth/login" not in driver.current_url)
    yield driver
    driver.quit()


def test_a_request_without_credentials_gets_no_data(airflow, finished_run):
    run_view = "/model-selection/run?" + urllib.parse.urlencode({"dag_id": DAG_ID, "run_id": finished_run["run"]["dag_run_id"]})
    for path in ("/model-selection/", "/model-selection/plot.png?dataset=tiny&config_hash=x", run_view):
        status, body = airflow.request(path)
        assert status == 401, (path, status)
        assert b"test_resnet" not in body
        status, body = airflow.request(path, token="not-a-token")
        assert status in (401, 403) and b"test_resnet" not in body


def test_the_run_completes_and_map_indexes_say_how_each_model_went(finished_run):
    assert finished_run["run"]["state"] == "success", finished_run["run"]
    by_task = {}
    for ti in finished_run["instances"]:
        by_task.setdefault(ti["task_id"], {})[ti["map_index"]] = ti
    assert {ti["state"] for ti in by_task["lane.launch"].values()} == {"success"}
    labels = sorted(ti["rendered_map_index"] for ti in by_task["lane.wait"].values())
    assert labels[0].startswith("test_convnext · ms") and labels[0].endswith(" · Failed"), labels
    assert labels[1].startswith("test_resnet · ms") and labels[1].endswith(" · Completed"), labels
    assert sorted(ti["rendered_map_index"] for ti in by_task["lane.launch"].values()) == [
        "test_convnext · attempt 1 · launched", "test_resnet · attempt 1 · launched"]


def test_the_page_in_chromium_embedded_in_the_airflow_ui(airflow, finished_run, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 120)
    browser.get(f"{airflow.url}/plugin/model-selection")  # the menu entry: the page embedded in Airflow's UI
    # The UI mirrors the frame's address into its own once the frame has loaded; before that it may
    # still replace the frame, and elements found in it would go stale.
    wait.until(lambda _: "/plugin/model-selection/model-selection/" in browser.current_url)
    browser.switch_to.frame(browser.find_element(By.TAG_NAME, "iframe"))
    plot = wait.until(ready.presence_of_element_located((By.ID, "frontier-plot")))
    wait.until(lambda _: browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", plot))
    assert browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", plot) == [1200, 720]

    def table(section: str):
        """The first element after the section's heading that is not a warning (the frontier's may carry one)."""
        heading = next(h for h in browser.find_elements(By.TAG_NAME, "h2") if h.text == section)
        return heading.find_element(By.XPATH, "following-sibling::*[not(contains(@class, 'warning'))][1]")

    def cells(section: str) -> list[list[str]]:
        return [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
                for row in table(section).find_elements(By.CSS_SELECTOR, "tbody tr")]

    def read_page() -> dict:
        ran = table("How each model ran")
        headers = [cell.text for cell in ran.find_elements(By.CSS_SELECTOR, "thead th")]
        return {
            "frontier": [row[0] for row in cells("Frontier")],
            "warning": browser.find_element(By.CSS_SELECTOR, ".weights-warning").text,
            "all": [row[0] for row in cells("All models")],
            "failed": {row[0]: row[2] for row in cells("Failed, stopped or not launched")},
            "nav": browser.find_element(By.TAG_NAME, "nav").text,
            "bold or scripts": browser.find_elements(By.CSS_SELECTOR, "nav b, table b, table img, table script"),
            "ran": [(row.text, dict(zip(headers, (cell.text for cell in row.find_elements(By.TAG_NAME, "td")))))
                    for row in ran.find_elements(By.CSS_SELECTOR, "tbody tr")],
        }

    page = settled(browser, read_page)
    assert page["frontier"] == ["test_resnet (random init)"]  # no hub here: marked, and warned above
    assert "started from random weights" in page["warning"]
    assert sorted(page["all"]) == sorted([HOSTILE_MODEL, "test_convnext", "test_resnet"])
    assert "Kernel size can't be greater" in page["failed"]["test_convnext"]
    assert page["failed"][HOSTILE_MODEL] == HOSTILE_REASON  # shown as text, never run
    assert f"Data sets: {HOSTILE_DATASET} · tiny" in page["nav"]
    assert page["bold or scripts"] == []
    assert browser.execute_script("return window.injected === undefined")
    assert not any(value in browser.page_source for value in CANARIES.values())

    resnet = next(cells for text, cells in page["ran"] if text.startswith("test_resnet "))
    assert {key: resnet[key] for key in ("status", "attempt", "launch try", "launch waits", "wait try")} == {
        "status": "Completed", "attempt": "1", "launch try": "1", "launch waits": "0", "wait try": "1"}

    # Each row links to its DAG run and mapped task instances in the Airflow UI.
    run_id = finished_run["run"]["dag_run_id"]
    link_text = f"wait[{model_map_index(finished_run, 'test_resnet')}]"
    # target=_top: the whole UI goes to the task instance
    settled(browser, lambda: table("How each model ran").find_element(By.LINK_TEXT, link_text).click())
    browser.switch_to.default_content()
    wait.until(lambda _: "/tasks/lane.wait/mapped/" in browser.current_url)
    assert browser.current_url.split("/dags/")[1].startswith(f"{DAG_ID}/runs/")
    assert urllib.parse.unquote(browser.current_url).split("/runs/")[1].startswith(run_id)
    wait.until(ready.text_to_be_present_in_element((By.TAG_NAME, "body"), "test_resnet · ms"))


def model_map_index(finished_run: dict, model_id: str) -> int:
    return next(ti["map_index"] for ti in finished_run["instances"]
                if ti["task_id"] == "lane.wait" and ti["rendered_map_index"].startswith(f"{model_id} · "))


class LanesTable(html.parser.HTMLParser):
    """The run view's table#lanes as rows of {header: (text, [hrefs])}, and every other link."""

    def __init__(self, page: str):
        super().__init__()
        self.headers: list[str] = []
        self.rows: list[list[tuple[str, list[str]]]] = []
        self.links: list[tuple[str, str]] = []
        self._in_table = self._cell = None
        self._href = None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and attrs.get("id") == "lanes":
            self._in_table = True
        elif self._in_table and tag == "tr":
            self.rows.append([])
        elif self._in_table and tag in ("td", "th"):
            self._cell = ["", []]
        if tag == "a":
            self._href = attrs.get("href")
            self.links.append((attrs.get("href"), ""))
            if self._cell is not None:
                self._cell[1].append(attrs.get("href"))

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[0] += data
        if self._href is not None:
            self.links[-1] = (self.links[-1][0], self.links[-1][1] + data)

    def handle_endtag(self, tag):
        if tag == "a":
            self._href = None
        elif tag == "table":
            self._in_table = None
        elif tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append((self._cell[0], self._cell[1]))
            self._cell = None

    def lanes(self) -> dict[str, dict[str, tuple[str, list[str]]]]:
        headers = [text for text, _ in self.rows[0]]
        return {row[0][0]: dict(zip(headers, row)) for row in self.rows[1:]}


def run_view_path(run_id: str, dag_id: str = DAG_ID) -> str:
    return "/model-selection/run?" + urllib.parse.urlencode({"dag_id": dag_id, "run_id": run_id})


def test_the_run_view_shows_each_lane_and_links_to_its_task_instances(airflow, finished_run):
    run_id = finished_run["run"]["dag_run_id"]
    status, body = airflow.request(run_view_path(run_id), token=airflow.token())
    assert status == 200, body[:500]
    page = body.decode()
    table = LanesTable(page)
    lanes_ = table.lanes()
    assert sorted(lanes_) == ["test_convnext", "test_resnet"]
    text = {model: {header: cell[0] for header, cell in lane.items()} for model, lane in lanes_.items()}
    resnet, convnext = text["test_resnet"], text["test_convnext"]
    for lane in (resnet, convnext):  # a retried launch says which try launched it
        assert re.fullmatch(r"launched( \(try \d\))?", lane["launch"]), lane
    assert resnet["job status"] == resnet["ended"] == "Completed" and resnet["reason"] == "—"
    assert resnet["elapsed"].startswith("ran ") and re.fullmatch(r"\d+ Completed", resnet["training jobs"]), resnet
    assert re.fullmatch(r"\S+ = [\d.e-]+", resnet["best objective so far"]), resnet
    assert resnet["throttled describes"] == "0"
    assert convnext["job status"] == convnext["ended"] == "Failed"
    assert "Kernel size can't be greater" in convnext["reason"]
    assert not any(value in page for value in CANARIES.values())

    # Links to the lane's own task instances, as UILinks writes them, opened in the whole Airflow UI.
    links = UILinks("")
    for model, lane in lanes_.items():
        map_index = model_map_index(finished_run, model)
        assert text[model]["lane"] == str(map_index)
        assert lane["task instances"][1] == [links.task_instance(DAG_ID, run_id, "lane.launch", map_index),
                                             links.task_instance(DAG_ID, run_id, "lane.wait", map_index)]
    report = [href for href, label in table.links if label.startswith("tiny, configuration ")]
    config_hash = finished_run["rows"][0]["config_hash"]
    assert report == [f"/plugin/model-selection/model-selection/?dataset=tiny&config_hash={config_hash}"]
    assert "this view reloads" not in page  # the run has ended
    status, body = airflow.request("/model-selection/?dataset=tiny", token=airflow.token())  # the page links here
    assert (links.run_view(DAG_ID, run_id), f"Lanes of its latest run ({run_id})") in LanesTable(body.decode()).links

    # The DAG-run tab is on every DAG's runs: other DAGs get a note; an unknown run a 404.
    status, body = airflow.request(run_view_path("x", dag_id="another_dag"), token=airflow.token())
    assert status == 200 and b"This view is for image_classification_model_selection" in body
    status, body = airflow.request("/model-selection/?dag_id=another_dag", token=airflow.token())
    assert status == 200 and b"This view is for image_classification_model_selection" in body
    status, body = airflow.request(run_view_path("no-such-run"), token=airflow.token())
    assert status == 404 and b"no run no-such-run" in body

    views = {view["url_route"]: view for plugin in airflow.api("/plugins")["plugins"]
             for view in plugin["external_views"] if plugin["name"] == "model_selection"}
    assert views["model-selection-run"]["destination"] == "dag_run"
    assert views["model-selection-run"]["href"] == "/model-selection/run?dag_id={DAG_ID}&run_id={RUN_ID}"
    assert views["model-selection-dag"]["href"] == "/model-selection/?dag_id={DAG_ID}"


def test_the_run_view_is_a_tab_of_the_dag_run_in_chromium(airflow, finished_run, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    run_id = finished_run["run"]["dag_run_id"]
    browser.get(f"{airflow.url}/dags/{DAG_ID}/runs/{urllib.parse.quote(run_id, safe='')}/plugin/model-selection-run")
    frame = WebDriverWait(browser, 120).until(ready.presence_of_element_located((By.TAG_NAME, "iframe")))
    # Airflow filled the placeholders of the view's href with this DAG and run.
    assert urllib.parse.unquote(frame.get_attribute("src")).endswith(
        f"/model-selection/run?dag_id={DAG_ID}&run_id={run_id}"), frame.get_attribute("src")
    browser.switch_to.frame(frame)
    # the view reloads itself every 30 s: each try finds the table anew
    models = settled(browser, lambda: sorted(
        row.find_element(By.TAG_NAME, "td").text
        for row in browser.find_element(By.ID, "lanes").find_elements(By.CSS_SELECTOR, "tbody tr")))
    assert models == ["test_convnext", "test_resnet"]
    assert browser.execute_script("return window.injected === undefined")
    browser.switch_to.default_content()


def test_a_launch_waiting_for_capacity_shows_in_the_run_view_not_in_its_label(airflow, finished_run):
    """Two models, one job in flight at a time: the second launch defers until the first job ends.

    While it is deferred its map-index label stays as rendered before `execute` (Airflow 3.3 renders
    it again only when the task ends); the run view says how long it has waited and how often it checked.
    """
    conf = {
        "model_ids": ["test_resnet", "test_efficientnet"],
        "dataset": {"name": "tiny", **{channel: str(airflow.data / channel) for channel in ("training", "validation", "test")}},
        "hyperparameters": TINY,
        "epochs": 400, "early_stopping_patience": 400,  # the first job outlasts the second launch's check
        "learning_rate_multipliers": [1.0],
        "max_concurrent_tuning_jobs": 1,
    }
    run = airflow.api(f"/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": conf})
    path = f"/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run['dag_run_id'], safe='')}"

    def deferred_launch() -> dict | None:
        instances = airflow.api(f"{path}/taskInstances?limit=100")["task_instances"]
        return next((ti for ti in instances if ti["task_id"] == "lane.launch" and ti["state"] == "deferred"), None)

    try:
        waiting = wait_until(deferred_launch, 600, "a launch to wait for capacity", airflow.process, airflow.log)
        status, body = airflow.request(run_view_path(run["dag_run_id"]), token=airflow.token())
        assert status == 200, body[:500]
        lanes_ = LanesTable(body.decode()).lanes()
        model = waiting["rendered_map_index"].split(" · ")[0]
        other = next(name for name in lanes_ if name != model)
        assert waiting["rendered_map_index"] == f"{model} · attempt 1"  # not "· waiting (capacity) ..."
        launch = lanes_[model]["launch"][0]
        # at least the first check (more where a loaded machine took past the re-check interval to get here)
        assert re.fullmatch(r"waiting for capacity: .+, (1 check|[2-9]\d* checks)", launch), launch
        assert lanes_[model]["job status"][0] == "no job yet" and lanes_[model]["ended"][0] == "running"
        assert lanes_[other]["launch"][0] == "launched"
        assert lanes_[other]["job status"][0] == "InProgress", lanes_[other]
        assert lanes_[other]["elapsed"][0].endswith(" so far")
        assert b"this view reloads every 30 s" in body
    finally:
        end_run(airflow, path)


def test_a_deferred_wait_killed_by_the_user_stops_its_job(airflow, finished_run):
    """Mark the deferred `lane.wait` failed as the UI's "Mark as failed" does (a PATCH of the task
    instance's state): the triggerer drops the trigger no deferred task uses any more, cancels it
    as a user action and awaits its `on_kill`, which stops the tuning job it was waiting for."""
    conf = {
        "model_ids": ["test_resnet"],
        "dataset": {"name": "tiny", **{channel: str(airflow.data / channel) for channel in ("training", "validation", "test")}},
        "hyperparameters": TINY,
        "epochs": 3000, "early_stopping_patience": 3000,  # InProgress for far longer than the test
        "learning_rate_multipliers": [1.0],
    }
    run = airflow.api(f"/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": conf})
    path = f"/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run['dag_run_id'], safe='')}"
    client = LocalSageMakerClient(airflow.jobs)

    def status(job_name: str) -> str:
        return client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=job_name)["HyperParameterTuningJobStatus"]

    def deferred_wait() -> dict | None:
        instances = airflow.api(f"{path}/taskInstances?limit=100")["task_instances"]
        return next((ti for ti in instances if ti["task_id"] == "lane.wait" and ti["state"] == "deferred"), None)

    try:
        waiting = wait_until(deferred_wait, 600, "the wait to defer", airflow.process, airflow.log)
        model, job_name = waiting["rendered_map_index"].split(" · ")[:2]  # rendered before `execute` deferred
        assert model == "test_resnet" and job_name in client.store.tuning_job_names(), waiting
        assert status(job_name) == "InProgress"
        # The triggerer must be running the trigger: a task killed before the triggerer has picked its trigger
        # up has nothing to cancel, so Airflow calls no on_kill (the README says so). Its first poll logs the job.
        trigger_logs = (airflow.home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run['dag_run_id']}" / "task_id=lane.wait"
                        / f"map_index={waiting['map_index']}")
        wait_until(lambda: job_name in "".join(p.read_text() for p in trigger_logs.glob("*.log.trigger.*")), 300,
                   "the triggerer to run the wait's trigger", airflow.process, airflow.log)

        # The UI's "Mark as failed" on a mapped task instance sends this (patchTaskInstanceByMapIndex).
        ti_path = f"{path}/taskInstances/lane.wait/{waiting['map_index']}"
        marked = airflow.api(ti_path, method="PATCH", body={"new_state": "failed", "include_upstream": False, "include_downstream": False,
                                 "include_future": False, "include_past": False})
        assert [(ti["task_id"], ti["map_index"], ti["state"]) for ti in marked["task_instances"]] == [
            ("lane.wait", waiting["map_index"], "failed")]

        started = time.time()
        ended = wait_until(lambda: (s := status(job_name)) in ("Stopping", "Stopped") and s, 300,
                           f"{job_name} to stop after its wait was marked failed", airflow.process, airflow.log)
        print(f"{job_name}: {ended} {time.time() - started:.1f} s after the wait was marked failed")
        # It was the trigger's on_kill, called by the triggerer for a user action, that stopped it.
        trigger_log = wait_until(
            lambda: "asked to stop" in (text := "".join(p.read_text() for p in trigger_logs.glob("*.log.trigger.*"))) and text,
            300, "the trigger's log of on_kill", airflow.process, airflow.log)
        assert "Trigger cancelled by user action, invoking on_kill" in trigger_log
        assert f"{job_name} asked to stop" in trigger_log
        assert airflow.api(ti_path)["state"] == "failed"  # the kill did not resume the task
    finally:
        try:
            airflow.api(path, {"state": "failed"}, method="PATCH")
        finally:
            for name in client.store.tuning_job_names():
                if status(name) == "InProgress":
                    client.stop_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)


def test_the_trigger_form_runs_with_its_defaults(airflow, finished_run, browser):
    """Trigger from the form as it opens: the run gets the DAG's defaults and plans the five default
    models on the digits (which `make airflow` wrote). The jobs are then stopped, to keep the suite
    short: the whole default run (about 8 minutes on 2 cores) is in the README."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from selenium.common.exceptions import ElementClickInterceptedException, StaleElementReferenceException

    browser.get(f"{airflow.url}/dags/{DAG_ID}")
    # The page re-renders its buttons as it loads: each try finds them anew and clicks at once.
    wait = WebDriverWait(browser, 120, ignored_exceptions=(StaleElementReferenceException, ElementClickInterceptedException))

    def click_trigger(button: int, present: int):
        def attempt(_) -> bool:
            found = [b for b in browser.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Trigger"]
            if len(found) < present:
                return False
            browser.execute_script("arguments[0].scrollIntoView()", found[button])
            found[button].click()
            return True
        wait.until(attempt)

    click_trigger(0, present=1)  # the DAG page's button opens the form ...
    click_trigger(-1, present=2)  # ... whose own button triggers the run
    wait.until(lambda _: "/runs/" in browser.current_url)
    run_id = urllib.parse.unquote(browser.current_url.split("/runs/")[1].split("/")[0])
    path = f"/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run_id, safe='')}"

    def five_launched() -> list[dict] | None:
        instances = airflow.api(f"{path}/taskInstances?limit=100")["task_instances"]
        launched = [ti for ti in instances if ti["task_id"] == "lane.launch" and ti["state"] == "success"]
        return launched if len(launched) == 5 else None

    try:
        launched = wait_until(five_launched, 600, "the default run to launch its five models", airflow.process, airflow.log)
    finally:
        end_run(airflow, path)
    conf = airflow.api(path)["conf"]
    assert conf["backend"] == "local" and conf["dataset"]["name"] == "digits" and conf["model_list"] is None
    assert sorted(ti["rendered_map_index"].split(" · ")[0] for ti in launched) == sorted(conf["model_ids"])
    assert len(conf["model_ids"]) == 5


# -- the run view's pure parts, with the values Airflow and the backends give -----------------------

NOW = 1_767_268_800.0  # 2026-01-01T12:00:00Z


def test_a_deferred_launch_says_how_long_it_has_waited_and_how_often_it_checked():
    # TaskInstance.next_kwargs of a launch deferred by TuningJobLaunchOperator._wait, as Airflow stores them
    waiting = {"waits": 5, "waiting_since": NOW - 12 * 60 - 20, "kind": "capacity"}
    assert launch_text("deferred", waiting, None, NOW, try_number=2) == "waiting for capacity: 12 min, 5 checks (try 2)"
    assert launch_text("deferred", {**waiting, "kind": "throttled"}, None, NOW) == "waiting for throttling: 12 min, 5 checks"
    # the trigger fired: Airflow adds the event and queues the task to check again
    assert launch_text("queued", {**waiting, "event": None}, None, NOW) == "checking again (waited 12 min, 5 checks)"
    assert launch_text("success", None, {"launch_waits": 2, "launch_wait_seconds": 181.0}, NOW) == "launched after 2 waits (3 min)"
    assert launch_text("success", None, {"launch_waits": 0, "launch_wait_seconds": 0.0}, NOW) == "launched"
    assert launch_text("failed", {"waits": 30, "waiting_since": NOW - 86_400}, None, NOW) == "failed after waiting 1 d, 30 checks"
    assert launch_text(None, None, None, NOW) == "not started"
    assert launch_text("upstream_failed", None, None, NOW) == "not run: an upstream task failed"


def test_a_job_in_progress_shows_elapsed_time_counters_and_best_objective_so_far():
    created = dt.datetime.fromtimestamp(NOW - 7 * 60, dt.timezone.utc)
    description = {  # DescribeHyperParameterTuningJob, as boto3 and the local backend answer it
        "HyperParameterTuningJobName": "ms1a2b3c4d-test-resnet-0f3e9a71", "HyperParameterTuningJobStatus": "InProgress",
        "CreationTime": created,
        "TrainingJobStatusCounters": {"Completed": 1, "InProgress": 1, "RetryableError": 0, "NonRetryableError": 0, "Stopped": 0},
        "BestTrainingJob": {"FinalHyperParameterTuningJobObjectiveMetric": {"MetricName": "validation:accuracy", "Value": 0.875123}},
    }
    job = job_view(description, NOW)
    assert (job.status, job.elapsed, job.training_jobs, job.best) == (
        "InProgress", "7 min so far", "1 Completed, 1 InProgress", "validation:accuracy = 0.8751")
    ended = job_view({**description, "HyperParameterTuningJobStatus": "Failed", "FailureReason": "No training job succeeded",
                      "HyperParameterTuningEndTime": created + dt.timedelta(hours=2, minutes=5)}, NOW)
    assert (ended.status, ended.elapsed, ended.failure_reason) == ("Failed", "ran 2 h 5 min", "No training job succeeded")


def test_the_run_view_escapes_what_jobs_and_users_wrote_and_survives_an_unreadable_job():
    run = RunState(dag_id=DAG_ID, run_id="manual__<b>2026</b>", state="running")
    launches = [{"model_id": HOSTILE_MODEL, "job_name": "ms1-a", "attempt": 1, "map_index": 0, "hook_params": {}},
                {"model_id": "resnet18", "job_name": "ms1-b", "attempt": 2, "map_index": 1, "hook_params": {}},
                {"model_id": "resnet50", "job_name": "ms1-c", "attempt": 1, "map_index": 2, "hook_params": {}}]
    run.xcoms[("screen", -1, "return_value")] = launches
    run.xcoms[("plan", -1, "study")] = {"dataset": {"name": HOSTILE_DATASET}, "config_hash": "abc123"}
    run.xcoms[("lane.wait", 0, "return_value")] = None
    for map_index, state in ((0, "success"), (1, "success"), (2, "deferred")):
        run.instances[("lane.launch", map_index)] = {"state": state, "try_number": 1,
                                                     "next_kwargs": {"waits": 3, "waiting_since": NOW - 300, "kind": "quota"} if state == "deferred" else None}
    run.instances[("lane.wait", 0)] = {"state": "failed", "try_number": 1}
    run.instances[("lane.wait", 1)] = {"state": "deferred", "try_number": 1}

    def describe(launch):
        if launch["job_name"] == "ms1-b":
            raise PermissionError("AccessDenied: not authorized to perform sagemaker:DescribeHyperParameterTuningJob")
        return {"HyperParameterTuningJobName": "ms1-a", "HyperParameterTuningJobStatus": "Failed",
                "CreationTime": dt.datetime.fromtimestamp(NOW - 60, dt.timezone.utc), "FailureReason": HOSTILE_REASON}

    described = lanes(run, describe, NOW)
    assert [lane.ended for lane in described] == ["Failed", "", ""]
    assert described[1].job.status == (
        "not readable: PermissionError: AccessDenied: not authorized to perform sagemaker:DescribeHyperParameterTuningJob")
    assert described[2].launch == "waiting for quota: 5 min, 3 checks"
    page = render_run_page(run, described, UILinks("/airflow"))
    for hostile in (HOSTILE_MODEL, HOSTILE_REASON, HOSTILE_DATASET, run.run_id):
        assert hostile not in page
    table = LanesTable(page)
    lanes_ = table.lanes()
    assert lanes_[HOSTILE_MODEL]["reason"][0] == HOSTILE_REASON  # the text, shown as text
    assert lanes_[HOSTILE_MODEL]["task instances"][1][0] == (
        "/airflow/dags/image_classification_model_selection/runs/manual__%3Cb%3E2026%3C%2Fb%3E/tasks/lane.launch/mapped/0")
    assert all(href.startswith("/airflow/") for href, _ in table.links), table.links
    assert '<meta http-equiv="refresh" content="30">' in page
