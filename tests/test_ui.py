"""The model-selection page in a real Airflow: `make airflow` on a loopback port, a run triggered
through the REST API, and the page read in headless Chromium after logging in through the UI's form.

Skips, saying why, where Chromium, ChromeDriver or Selenium is missing (`make test` installs them).
"""

from __future__ import annotations

import json
import os
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

from model_selection.results import ResultsStore

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (make test installs them with apt-get where it can)",
)
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
        status, answer = self.request(f"/api/v2{path}", body, self.token(), method)
        assert status in (200, 201), (path, status, answer[:500])
        return json.loads(answer)


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
        wait_until(lambda: instance.request("/api/v2/monitor/health")[0] == 200, 300, "the API server", process, log)
        wait_until(lambda: instance.request(f"/api/v2/dags/{DAG_ID}", token=instance.token())[0] == 200, 180,
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
    }
    run = airflow.api(f"/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": conf})
    path = f"/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}"
    final = wait_until(lambda: (state := airflow.api(path))["state"] in ("success", "failed") and state, 600,
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


@pytest.fixture(scope="module")
def browser(airflow):
    """Headless Chromium, logged in through Airflow's own login form."""
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
    WebDriverWait(driver, 60).until(ready.presence_of_element_located((By.NAME, "username"))).send_keys("admin")
    driver.find_element(By.NAME, "password").send_keys(airflow.password)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(driver, 60).until(lambda _: "/auth/login" not in driver.current_url)
    yield driver
    driver.quit()


def test_a_request_without_credentials_gets_no_data(airflow, finished_run):
    for path in ("/model-selection/", "/model-selection/plot.png?dataset=tiny&config_hash=x"):
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
    assert {ti["state"] for ti in by_task["launch"].values()} == {"success"}
    labels = sorted(ti["rendered_map_index"] for ti in by_task["wait"].values())
    assert labels[0].startswith("test_convnext · ms") and labels[0].endswith(" · Failed"), labels
    assert labels[1].startswith("test_resnet · ms") and labels[1].endswith(" · Completed"), labels
    assert sorted(ti["rendered_map_index"] for ti in by_task["launch"].values()) == [
        "test_convnext · attempt 1 · launched", "test_resnet · attempt 1 · launched"]


def test_the_page_in_chromium_embedded_in_the_airflow_ui(airflow, finished_run, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(f"{airflow.url}/plugin/model-selection")  # the menu entry: the page embedded in Airflow's UI
    # The UI mirrors the frame's address into its own once the frame has loaded; before that it may
    # still replace the frame, and elements found in it would go stale.
    wait.until(lambda _: "/plugin/model-selection/model-selection/" in browser.current_url)
    browser.switch_to.frame(browser.find_element(By.TAG_NAME, "iframe"))
    plot = wait.until(ready.presence_of_element_located((By.ID, "frontier-plot")))
    wait.until(lambda _: browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", plot))
    assert browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", plot) == [1200, 720]

    tables = {heading.text: heading.find_element(By.XPATH, "following-sibling::*[1]")
              for heading in browser.find_elements(By.TAG_NAME, "h2")}
    def first_cells(section: str) -> list[str]:
        return [row.find_element(By.TAG_NAME, "td").text for row in tables[section].find_elements(By.CSS_SELECTOR, "tbody tr")]

    assert first_cells("Frontier") == ["test_resnet"]
    assert sorted(first_cells("All models")) == sorted([HOSTILE_MODEL, "test_convnext", "test_resnet"])
    failed = {row.find_elements(By.TAG_NAME, "td")[0].text: row.find_elements(By.TAG_NAME, "td")[2].text
              for row in tables["Failed, stopped or not launched"].find_elements(By.CSS_SELECTOR, "tbody tr")}
    assert "Kernel size can't be greater" in failed["test_convnext"]
    assert failed[HOSTILE_MODEL] == HOSTILE_REASON  # shown as text, never run
    assert f"Data sets: {HOSTILE_DATASET} · tiny" in browser.find_element(By.TAG_NAME, "nav").text
    assert browser.find_elements(By.CSS_SELECTOR, "nav b, table b, table img, table script") == []
    assert browser.execute_script("return window.injected === undefined")
    assert not any(value in browser.page_source for value in CANARIES.values())

    ran = tables["How each model ran"]
    headers = [cell.text for cell in ran.find_elements(By.CSS_SELECTOR, "thead th")]
    resnet = next(dict(zip(headers, (cell.text for cell in row.find_elements(By.TAG_NAME, "td"))))
                  for row in ran.find_elements(By.CSS_SELECTOR, "tbody tr") if row.text.startswith("test_resnet "))
    assert {key: resnet[key] for key in ("status", "attempt", "launch try", "launch waits", "wait try")} == {
        "status": "Completed", "attempt": "1", "launch try": "1", "launch waits": "0", "wait try": "1"}

    # Each row links to its DAG run and mapped task instances in the Airflow UI.
    run_id = finished_run["run"]["dag_run_id"]
    wait_link = tables["How each model ran"].find_element(By.LINK_TEXT, f"wait[{model_map_index(finished_run, 'test_resnet')}]")
    wait_link.click()  # target=_top: the whole UI goes to the task instance
    browser.switch_to.default_content()
    wait.until(lambda _: "/tasks/wait/mapped/" in browser.current_url)
    assert browser.current_url.split("/dags/")[1].startswith(f"{DAG_ID}/runs/")
    assert urllib.parse.unquote(browser.current_url).split("/runs/")[1].startswith(run_id)
    wait.until(ready.text_to_be_present_in_element((By.TAG_NAME, "body"), "test_resnet · ms"))


def model_map_index(finished_run: dict, model_id: str) -> int:
    return next(ti["map_index"] for ti in finished_run["instances"]
                if ti["task_id"] == "wait" and ti["rendered_map_index"].startswith(f"{model_id} · "))


def test_the_trigger_form_runs_with_its_defaults(airflow, finished_run, browser):
    """Trigger from the form as it opens: the run gets the DAG's defaults and plans the five default
    models on the digits (which `make airflow` wrote). The jobs are then stopped, to keep the suite
    short: the whole default run (about 8 minutes on 2 cores) is in the README."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from model_selection.backends.local import LocalSageMakerClient

    browser.get(f"{airflow.url}/dags/{DAG_ID}")
    wait = WebDriverWait(browser, 60)
    buttons = lambda: [b for b in browser.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Trigger"]  # noqa: E731
    wait.until(lambda _: buttons())[0].click()  # the DAG page's button opens the form ...
    wait.until(lambda _: len(buttons()) > 1)
    browser.execute_script("arguments[0].scrollIntoView()", buttons()[-1])
    buttons()[-1].click()  # ... whose own button triggers the run
    wait.until(lambda _: "/runs/" in browser.current_url)
    run_id = urllib.parse.unquote(browser.current_url.split("/runs/")[1].split("/")[0])
    path = f"/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run_id, safe='')}"

    def five_launched() -> list[dict] | None:
        instances = airflow.api(f"{path}/taskInstances?limit=100")["task_instances"]
        launched = [ti for ti in instances if ti["task_id"] == "launch" and ti["state"] == "success"]
        return launched if len(launched) == 5 else None

    try:
        launched = wait_until(five_launched, 240, "the default run to launch its five models", airflow.process, airflow.log)
    finally:
        airflow.api(path, {"state": "failed"}, method="PATCH")
        client = LocalSageMakerClient(airflow.jobs)
        for name in client.store.tuning_job_names():
            if client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)["HyperParameterTuningJobStatus"] == "InProgress":
                client.stop_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
    conf = airflow.api(path)["conf"]
    assert conf["backend"] == "local" and conf["dataset"]["name"] == "digits" and conf["model_list"] is None
    assert sorted(ti["rendered_map_index"].split(" · ")[0] for ti in launched) == sorted(conf["model_ids"])
    assert len(conf["model_ids"]) == 5
