"""The trigger form as a person uses it: Chromium (Debian's) on a real `airflow api-server`, Airflow 3.3's own
React form for the DAG's params.

Touching the form and putting it back changes nothing: every switch turned on and off again, a number
changed and restored, then Trigger: the run's effective settings (the created run's conf, merged into the
DAG's params by Airflow's own ``process_params`` as the task runner does, then resolved by the product's
parsing as ``plan_partition`` does) are those of a run triggered from the untouched form, which are the
Variable's. And a value out of range is refused where the person sees it, before any run exists.

Written against what a person meets, whatever the params are: a number is edited where the form offers it
(a number field, or a key of the ``overrides`` JSON field). On the params before #21 part 3 (one field per
setting, all empty) both tests failed: the touched run replayed no blocked events, attributes or
identities and did not coalesce (each switch sent ``false``), and 45 days was clamped to 30 and run.

Skipped (with the reason) only when Chromium or Selenium is missing and CI is not set, as the console's
browser test (whose fixtures and helpers this one reuses).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys

import pytest

from tests.airflow import test_console_browser as console_browser
from tests.airflow.conftest import BUCKET, PREFIX, ROOT, airflow_cli
from tests.airflow.test_console_browser import OPEN_DIALOG, PASSWORD, USER, WAIT, dag_runs, free_port
from tests.fixtures.console.seed import DAG_ID
from tools.airflow_health import wait_for_api_server

pytestmark = pytest.mark.airflow

# The console's browser test's fixtures: Chromium and its driver (or the skip saying what is missing), the
# browser, and the deletion of the runs a test triggers through the UI.
browser_parts = console_browser.browser_parts
browser = console_browser.browser
cleanup_runs = console_browser.cleanup_runs

# The standing settings, with values of their own: a run that starts from the Variable shows them.
VARIABLE = {"bucket": BUCKET, "prefix": PREFIX, "max_age_days": 20, "replay_blocked_event_attributes": True}
SWITCH = "label[data-scope=switch][data-part=root][id^='switch:element_']"
NUMBER = "input[data-scope=number-input][data-part=input]"


@pytest.fixture(scope="module")
def form_server(airflow_db, browser_parts, tmp_path_factory):
    """A real `airflow api-server` (its own process group) serving the DAG as parsed now; one for the module.

    Nothing runs the DAG: the test reads what a run would use from the run's conf.
    """
    home = tmp_path_factory.mktemp("trigger-form")
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({USER: PASSWORD}))
    port = free_port()
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {
            "AIRFLOW_VAR_MPARTICLE_BACKFILL": json.dumps(VARIABLE),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:user",  # may read and trigger DAGs
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__API_AUTH__JWT_SECRET": "trigger-form-test-" + "j" * 64,
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__HOST": "127.0.0.1",
        }.items():
            patch.setenv(name, value)
        airflow_cli("dags", "reserialize")
        log = (home / "api-server.log").open("w")
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
            log.close()


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags")).dags[DAG_ID]


def effective_settings(dag, conf: dict) -> dict:
    """What ``plan_partition`` resolves for a run of ``conf`` under :data:`VARIABLE`."""
    from airflow.sdk.definitions.param import process_params

    from mparticle_backfill.settings import parse_settings, run_overrides

    params = process_params(dag, dag.get_task("plan_partition"), conf, suppress_exception=False)
    return parse_settings(VARIABLE, run_overrides(params)).to_json()


def open_trigger_form(browser, server: str):
    """The DAG's page (logging in through Airflow's page first) and its Trigger dialog."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT)
    browser.get(f"{server}/dags/{DAG_ID}")
    if browser.find_elements(By.NAME, "username") or "login" in browser.current_url:
        wait.until(ec.presence_of_element_located((By.NAME, "username"))).send_keys(USER)
        browser.find_element(By.NAME, "password").send_keys(PASSWORD)
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "[data-testid=trigger-dag-button]"))).click()
    dialog = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, OPEN_DIALOG)))
    wait.until(lambda _: dialog.find_elements(By.CSS_SELECTOR, "[id^='element_'], [id*=':element_']"))
    return dialog


def click(browser, element) -> None:
    reveal(browser, element)
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    element.click()


def reveal(browser, element) -> None:
    """Open the form's section (an accordion item, one open at a time) that holds ``element``."""
    from selenium.webdriver.support.ui import WebDriverWait

    opener = browser.execute_script(
        "const item = arguments[0].closest('[data-scope=accordion][data-part=item]');"
        "return item && item.querySelector(':scope > [data-part=item-trigger][aria-expanded=false]');",
        element,
    )
    if opener is not None:
        opener.click()
        WebDriverWait(browser, WAIT).until(lambda _: element.is_displayed())


def retype(browser, field, text: str) -> None:
    """Select what a text field holds and type ``text`` over it, as a person would."""
    from selenium.webdriver.common.keys import Keys

    click(browser, field)
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(Keys.BACKSPACE)
    if text:
        field.send_keys(text)
    field.send_keys(Keys.TAB)


def editor_text(browser, editor) -> str:
    """What one of the form's JSON editors (Monaco) shows, its lines read in one go, top to bottom."""
    return browser.execute_script(
        "return Array.from(arguments[0].querySelectorAll('.view-line'))"
        ".sort((a, b) => parseFloat(a.style.top) - parseFloat(b.style.top))"
        ".map(line => line.textContent).join('\\n');",
        editor,
    ).replace("\xa0", " ")


def retype_json(browser, editor, text: str) -> None:
    """Replace what one of the form's JSON editors (Monaco) holds with ``text``, pasted in one go.

    Pasted, not typed key by key: the form's JSON field re-renders the editor with its value, indented,
    whenever what it holds parses, which moves the cursor to the end (typing ``{"a": 45}`` into ``{}``
    leaves ``{"a": 4}5``, as it does for a person typing).
    """
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    click(browser, editor.find_element(By.CSS_SELECTOR, ".view-lines"))
    ActionChains(browser).key_down(Keys.CONTROL).send_keys("a").key_up(Keys.CONTROL).perform()
    browser.execute_script(
        "const data = new DataTransfer(); data.setData('text/plain', arguments[1]);"
        "arguments[0].dispatchEvent(new ClipboardEvent('paste', {clipboardData: data, bubbles: true}));",
        editor.find_element(By.CSS_SELECTOR, ".native-edit-context, textarea.inputarea"),
        text,
    )
    WebDriverWait(browser, WAIT).until(lambda _: parsed(editor_text(browser, editor)) == json.loads(text))


def parsed(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return None


def trigger(browser, dialog) -> tuple[str, dict]:
    """Press the form's Trigger button; the run it created (id, conf)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    before = {run[0] for run in dag_runs()}
    click(browser, dialog.find_element(By.CSS_SELECTOR, "[data-testid=trigger-dag-submit]"))
    WebDriverWait(browser, WAIT).until(lambda _: {run[0] for run in dag_runs()} - before)
    (made,) = [run for run in dag_runs() if run[0] not in before]
    return made[0], made[2]


def test_touching_the_form_and_putting_it_back_changes_nothing(form_server, browser, cleanup_runs, dag, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from mparticle_backfill.settings import parse_settings

    # An untouched form: the run uses the Variable's settings.
    dialog = open_trigger_form(browser, form_server)
    browser.save_screenshot(str(tmp_path / "untouched.png"))
    untouched_id, untouched_conf = trigger(browser, dialog)
    cleanup_runs.append(untouched_id)
    untouched = effective_settings(dag, untouched_conf)
    assert untouched == parse_settings(VARIABLE).to_json(), untouched_conf
    WebDriverWait(browser, WAIT).until(ec.invisibility_of_element_located((By.CSS_SELECTOR, OPEN_DIALOG)))

    # Every switch on and off again (each click seen to take), every number changed and restored.
    dialog = open_trigger_form(browser, form_server)
    switches = dialog.find_elements(By.CSS_SELECTOR, SWITCH)
    assert switches, "the form has no switch to toggle"
    for switch in switches:
        for _ in range(2):
            state = switch.get_attribute("data-state")
            click(browser, switch.find_element(By.CSS_SELECTOR, "[data-part=control]"))
            WebDriverWait(browser, WAIT).until(lambda _, s=switch, was=state: s.get_attribute("data-state") != was)
    numbers = dialog.find_elements(By.CSS_SELECTOR, NUMBER)
    for number in numbers:
        shown = number.get_attribute("value")
        retype(browser, number, "7" if shown != "7" else "8")
        assert number.get_attribute("value") != shown
        retype(browser, number, shown)
        assert number.get_attribute("value") == shown
    overrides = dialog.find_elements(By.ID, "element_overrides")
    if overrides:  # the standing settings' numbers are keys of one JSON object
        shown = editor_text(browser, overrides[0])
        retype_json(browser, overrides[0], '{"max_age_days": 7}')
        retype_json(browser, overrides[0], shown)
    assert numbers or overrides, "the form has no number to edit"
    browser.save_screenshot(str(tmp_path / "touched.png"))
    touched_id, touched_conf = trigger(browser, dialog)
    cleanup_runs.append(touched_id)
    touched = effective_settings(dag, touched_conf)
    changed = {name: (untouched[name], touched[name]) for name in untouched if touched[name] != untouched[name]}
    assert not changed, f"put back as it was, the form changed {changed} (untouched, touched); conf {touched_conf}"


def test_a_value_out_of_range_is_refused_where_the_person_sees_it(form_server, browser, cleanup_runs, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    dialog = open_trigger_form(browser, form_server)
    field = dialog.find_elements(By.CSS_SELECTOR, f"{NUMBER}[name=element_max_age_days]")
    if field:
        retype(browser, field[0], "45")
    else:
        retype_json(browser, dialog.find_element(By.ID, "element_overrides"), '{"max_age_days": 45}')
    before = {run[0] for run in dag_runs()}
    click(browser, dialog.find_element(By.CSS_SELECTOR, "[data-testid=trigger-dag-submit]"))
    WebDriverWait(browser, WAIT).until(  # a run, or the form's alert saying why there is none
        lambda driver: (
            {run[0] for run in dag_runs()} - before
            or driver.find_elements(By.CSS_SELECTOR, "[data-testid=error-alert]")
        )
    )
    browser.save_screenshot(str(tmp_path / "refused.png"))
    made = [run for run in dag_runs() if run[0] not in before]
    cleanup_runs.extend(run[0] for run in made)
    assert not made, f"45 days was not refused: a run was created with conf {made[0][2]}"
    # What the screen shows now, without scrolling: Airflow's toast, and the form's alert with the API's reason.
    alerts = browser.find_elements(By.CSS_SELECTOR, "[data-testid=error-alert], [data-scope=toast][data-part=root]")
    said = [alert.text for alert in alerts if in_view(browser, alert)]
    print("The screen says:", *said, sep="\n")
    assert any("max_age_days" in text and "maximum of 30" in text for text in said), said


def in_view(browser, element) -> bool:
    """Whether ``element`` is shown, whole, inside the window as it is scrolled now."""
    return element.is_displayed() and browser.execute_script(
        "const box = arguments[0].getBoundingClientRect(); return box.top >= 0 && box.bottom <= innerHeight;",
        element,
    )
