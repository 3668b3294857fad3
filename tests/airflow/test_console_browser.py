"""A person's view of the backfill console: Chromium (Debian's) opens the DAG's console tab on a real
`airflow api-server`, logs in through Airflow's own login page, reads the table, opens a date's history,
opens Airflow's trigger form from it, and follows a link to the run in the grid.

Skipped (with the reason) only when Chromium or Selenium is missing and CI is not set; under CI it must run
(`tools/install_browser.sh` installs Chromium and its driver from Debian's packages).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from datetime import datetime, timezone
from urllib.parse import quote

import pytest
import requests

from mparticle_backfill.settings import run_key
from tests.airflow.conftest import BUCKET, PREFIX, airflow_cli, clear_dag_runs
from tests.fixtures.console.seed import DAG_ID, add_dag_runs, console_scenario
from tools.airflow_health import wait_for_api_server

pytestmark = pytest.mark.airflow

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
USER, PASSWORD = "analyst", "console-browser-test"
STATE = f"{PREFIX}/_backfill"
TAB = f"/dags/{DAG_ID}/plugin/backfill-console"
CONSOLE = f"/mparticle-backfill/dags/{DAG_ID}/console"
WAIT = 60
OPEN_DIALOG = "[role=dialog][data-state=open]"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="module")
def browser_parts():
    """Chromium, its driver and Selenium, or a skip saying what is missing (a failure under CI)."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the Python package selenium")
    if missing:
        reason = f"browser test needs {', '.join(missing)}: run tools/install_browser.sh"
        if in_ci():
            pytest.fail(f"{reason} (CI is set, so the browser test must run)")
        pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def console_env(moto_server, s3, monkeypatch, tmp_path):
    """The DAG's S3 connection and Variable (moto), and Airflow's simple auth manager with one user."""
    conn = {"conn_type": "aws", "login": "testing", "password": "testing"}
    conn["extra"] = {"endpoint_url": moto_server, "region_name": "us-east-1"}
    passwords = tmp_path / "passwords.json"
    passwords.write_text(json.dumps({USER: PASSWORD}))
    for name, value in {
        "AIRFLOW_CONN_MPARTICLE_QUARANTINE_S3": json.dumps(conn),
        "AIRFLOW_VAR_MPARTICLE_BACKFILL": json.dumps({"bucket": BUCKET, "prefix": PREFIX}),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:user",  # may read and trigger DAGs
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__API_AUTH__JWT_SECRET": "console-browser-test-" + "j" * 64,
    }.items():
        monkeypatch.setenv(name, value)
    return s3


@pytest.fixture
def api_server(airflow_db, scenario, monkeypatch, tmp_path):
    """A real `airflow api-server` on 127.0.0.1 (its own process group), with the plugins folder of the project.

    Started once S3 is seeded: the console reads S3 when the api-server starts and caches it briefly.
    """
    airflow_cli("dags", "reserialize")
    port = free_port()
    monkeypatch.setenv("AIRFLOW__API__PORT", str(port))
    monkeypatch.setenv("AIRFLOW__API__HOST", "127.0.0.1")
    log = (tmp_path / "api-server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "airflow", "api-server", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy(), start_new_session=True,
    )  # fmt: skip
    try:
        wait_for_api_server(port, timeout=120)
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


@pytest.fixture
def scenario(console_env, airflow_db):
    clear_dag_runs()  # runs other tests left in the session's database are not this scenario's
    seeded = console_scenario(console_env, BUCKET, PREFIX, datetime.now(timezone.utc).date())
    delete = add_dag_runs(seeded.runs.values())
    yield seeded
    delete()


@pytest.fixture
def browser(browser_parts, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1500,1400"):
        options.add_argument(argument)
    driver = webdriver.Chrome(
        service=Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log")), options=options
    )
    driver.set_page_load_timeout(WAIT)
    yield driver
    driver.quit()


def latest_reports(s3) -> dict[str, dict]:
    """The latest report of each date, read from S3 as a person would check the page against it."""
    latest: dict[str, tuple] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{STATE}/"):
        for item in page.get("Contents", []):
            if "/reports/" in item["Key"] and item["Key"].endswith(".json"):
                body = json.loads(s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read())
                rank = (item["LastModified"], body["run"])
                if body["partition_date"] not in latest or rank > latest[body["partition_date"]][0]:
                    latest[body["partition_date"]] = (rank, body)
    return {day: body for day, (_, body) in latest.items()}


def dag_runs() -> list[tuple[str, str, dict]]:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        query = session.query(DagRun.run_id, DagRun.run_type, DagRun.conf).filter(DagRun.dag_id == DAG_ID)
        return [(run_id, str(run_type), dict(conf or {})) for run_id, run_type, conf in query]


@pytest.fixture
def cleanup_runs(airflow_db):
    """Runs the test triggers through the UI are deleted, and the DAG paused again as it was."""
    from airflow.models.dag import DagModel
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        paused = session.query(DagModel.is_paused).filter(DagModel.dag_id == DAG_ID).scalar()
    made: list[str] = []
    yield made
    with create_session() as session:
        session.query(DagRun).filter(DagRun.dag_id == DAG_ID, DagRun.run_id.in_(made)).delete()
        session.query(DagModel).filter(DagModel.dag_id == DAG_ID).update({DagModel.is_paused: paused})


def test_a_person_reads_the_console_in_airflow(api_server, scenario, browser, console_env, cleanup_runs, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT)
    ago = scenario.ago

    # Without a session the console answers nothing: Airflow's auth protects the plugin's app.
    for path in (CONSOLE, f"{CONSOLE}.json"):
        refused = requests.get(api_server + path, timeout=30)
        assert refused.status_code == 401 and str(ago[3]) not in refused.text

    # The DAG's console tab: Airflow sends the person to its login page first, then back.
    browser.get(api_server + TAB)
    wait.until(ec.presence_of_element_located((By.NAME, "username"))).send_keys(USER)
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    frame = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "iframe[title='Backfill console']")))
    assert browser.current_url.endswith(TAB)
    browser.switch_to.frame(frame)
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "table.dates tr.row")))

    # Every date in its state, and the figures of each date's latest report.
    rows = {row.get_attribute("data-date"): row for row in browser.find_elements(By.CSS_SELECTOR, "tr.row")}
    assert {n: rows[str(day)].get_attribute("data-state") for n, day in ago.items() if str(day) in rows} == (
        scenario.states
    )
    for day, report in latest_reports(console_env).items():
        cells = {
            cell.get_attribute("data-outcome"): cell.text
            for cell in rows[day].find_elements(By.CSS_SELECTOR, "td[data-outcome]")
        }
        assert cells["records_read"] == f"{report['summary']['records_read']:,}", day
        for outcome, records in report["totals"].items():
            assert cells[outcome] == f"{records:,}", (day, outcome)
    partly = rows[str(ago[3])]
    assert "invalid_json 6" in partly.text and "no_resolvable_identity 2" in partly.text
    assert rows[str(ago[4])].find_element(By.CSS_SELECTOR, "td[data-outcome=held]").text == "7"
    assert rows[str(ago[12])].find_elements(By.CSS_SELECTOR, "td.left.urgent")  # under 3 days left, not done
    assert "1 date leaves the replay window" in browser.find_element(By.CSS_SELECTOR, ".alert").text
    browser.switch_to.default_content()
    browser.save_screenshot(str(tmp_path / "console.png"))

    # The history of a date is one click away.
    browser.switch_to.frame(frame)
    partly.find_element(By.CSS_SELECTOR, "button.toggle").click()
    history = browser.find_element(By.ID, f"h-d-{ago[3]}")
    wait.until(lambda _: history.is_displayed())
    assert len(history.find_elements(By.CSS_SELECTOR, "table.runs-table tbody tr")) == 2
    assert f'{{"partition_date": "{ago[3]}"}}' in history.text and "--reprocess-behavior completed" in history.text
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", history)
    browser.switch_to.default_content()
    browser.save_screenshot(str(tmp_path / "console-history.png"))

    # "Trigger…" opens Airflow's own trigger form above the tab, for that date: triggering it makes a run of it.
    browser.switch_to.frame(frame)
    partly.find_element(By.CSS_SELECTOR, "button.trigger").click()
    toast = browser.find_element(By.ID, "toast")
    wait.until(lambda _: toast.is_displayed())
    assert f"Partition date {ago[3]}" in toast.text
    browser.switch_to.default_content()
    dialog = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, OPEN_DIALOG)))
    field = dialog.find_element(By.ID, "element_partition_date")
    wait.until(lambda _: field.get_attribute("value") == str(ago[3]))
    browser.save_screenshot(str(tmp_path / "console-trigger.png"))
    before = {run[0] for run in dag_runs()}
    submit = [b for b in dialog.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Trigger"]
    submit[-1].click()
    wait.until(lambda _: {run[0] for run in dag_runs()} - before)
    (made,) = [run for run in dag_runs() if run[0] not in before]
    cleanup_runs.append(made[0])
    assert made[1] == "manual" and made[2].get("partition_date") == str(ago[3])
    wait.until(ec.invisibility_of_element_located((By.CSS_SELECTOR, OPEN_DIALOG)))

    # Following the date's run link (back on the tab) moves Airflow's own UI to that run in the grid.
    run_id = scenario.runs["partly"][0]
    browser.get(api_server + TAB)
    frame = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "iframe[title='Backfill console']")))
    browser.switch_to.frame(frame)
    partly = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, f"tr.row[data-date='{ago[3]}']")))
    link = partly.find_element(By.LINK_TEXT, "run")
    assert link.get_attribute("href").endswith(f"/dags/{DAG_ID}/runs/{quote(run_id, safe='')}")
    link.click()
    browser.switch_to.default_content()
    wait.until(lambda driver: "/runs/" in driver.current_url)
    assert browser.current_url == f"{api_server}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}"
    wait.until(lambda driver: run_id in driver.find_element(By.TAG_NAME, "body").text)
    assert run_key(run_id) != run_id  # the report only knew the S3-safe key; the link has the real run id
