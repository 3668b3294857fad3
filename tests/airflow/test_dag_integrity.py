"""DAG integrity: it imports cleanly, its tasks are in order, with retries, tags, pool and docs."""

from __future__ import annotations

import itertools

import pytest

from tests.airflow.conftest import ROOT

pytestmark = pytest.mark.airflow


@pytest.fixture(scope="module")
def dag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    return bag.dags["mparticle_quarantine_backfill"]


def test_task_order(dag):
    order = ["plan_partition", "extract", "filter_by_age", "transform", "plan_shards", "dedupe_check", "send", "report"]
    assert set(dag.task_ids) == {*order, "release_partition"}
    for upstream, downstream in itertools.pairwise(order):
        assert downstream in dag.get_task(upstream).downstream_task_ids
    assert set(dag.get_task("report").upstream_task_ids) == set(order[:-1]) - {"plan_shards"}


def test_report_links(dag):
    assert {link.name for link in dag.get_task("report").operator_extra_links} == {"Backfill report", "Dead letters"}


def test_the_lock_is_released_by_a_teardown(dag):
    release = dag.get_task("release_partition")
    assert release.is_teardown
    assert dag.get_task("plan_partition").is_setup
    assert {"plan_partition", "report"} <= release.upstream_task_ids


def test_retries_tags_pool_docs(dag):
    assert {"mparticle", "backfill"} <= set(dag.tags)
    for task in dag.tasks:
        assert task.retries >= 2 and task.retry_exponential_backoff
    assert dag.get_task("send").pool == "mparticle_events_api"
    assert "partition" in dag.doc_md
    assert dag.max_active_runs == 3 and not dag.catchup  # three partitions at a time, each under its lock


def test_the_shipped_defaults_stay_under_mparticles_default_rate_limit():
    """airflow_settings.yaml: every sender of the pool together stays under 270 batches/s."""
    import yaml

    settings = yaml.safe_load((ROOT / "airflow_settings.yaml").read_text())["airflow"]
    (pool,) = [p for p in settings["pools"] if p["pool_name"] == "mparticle_events_api"]
    (events_api,) = [c for c in settings["connections"] if c["conn_id"] == "mparticle_events_api"]
    extra = events_api["conn_extra"]
    per_sender = extra["batches_per_second"] / extra["senders"]
    assert extra["senders"] == pool["pool_slot"]
    assert per_sender * pool["pool_slot"] <= 270


def test_every_setting_is_in_the_trigger_form_once(dag):
    """A per-run choice is a field of its own, defaulting to what a run does without it; every standing
    setting is a key of the one ``overrides`` object, ``{}`` by default: an untouched form changes nothing."""
    from mparticle_backfill.settings import OVERRIDES, PER_RUN_ONLY, SETTINGS, STANDING

    assert set(dag.params.keys()) == {*PER_RUN_ONLY, OVERRIDES}
    assert {name: dag.params.get_param(name).value for name in PER_RUN_ONLY} == {
        name: SETTINGS[name][0] for name in PER_RUN_ONLY
    }
    overrides = dag.params.get_param(OVERRIDES)
    assert overrides.value == {} and set(overrides.schema["properties"]) == set(STANDING)
    assert set(STANDING) | set(PER_RUN_ONLY) == set(SETTINGS)


def widget(schema) -> str:
    """The trigger form's widget for a param, by the rules of Airflow 3.3's FieldSelector (airflow-core/src/
    airflow/ui/src/components/FlexibleForm/FieldSelector.tsx): the first non-null type decides, a multi-type
    param gets a text area, an enum a dropdown, a date or date-time format its picker."""
    kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    kinds = [kind for kind in kinds if kind != "null"]
    if len(kinds) > 1 and "enum" not in schema and "examples" not in schema:
        return "multi-type"
    kind = kinds[0]
    if kind == "boolean":
        return "switch"
    if kind == "string" and schema.get("format") in ("date", "date-time"):
        return schema["format"]
    if "enum" in schema:
        return "dropdown"
    if kind == "array":
        return "string list" if schema.get("items", {}).get("type") in (None, "string") else "JSON"
    return {"object": "JSON", "integer": "number", "number": "number"}.get(kind, "text")


def test_the_trigger_form_shows_what_a_run_uses_and_changes_nothing_untouched(dag):
    """What Airflow 3.3's form does with each widget, and why each param has the one it has.

    The form sends every field, touched or not. A switch shows ``Boolean(value)`` and sends true or false
    once touched (a null one is drawn off): only a choice whose default is off and that the Variable cannot
    set may be a switch. A number field clamps to its schema's bounds on blur, silently: no number field. A
    JSON field shows its value (``{}`` for null) and is not checked against its schema in the browser; the
    API checks it when Trigger is pressed.
    """
    import copy

    from airflow.sdk.definitions.param import ParamValidationError

    from mparticle_backfill.settings import OVERRIDES

    params = {name: dag.params.get_param(name) for name in dag.params}
    widgets = {name: widget(param.schema) for name, param in params.items()}
    assert widgets == {
        "partition_date": "date",
        "dry_run": "switch",
        "force": "switch",
        "reference_time": "date-time",
        OVERRIDES: "JSON",
    }
    for name, param in params.items():
        assert param.schema["title"], name
        if widgets[name] == "switch":
            assert param.value is False, f"{name}: a switch is drawn off, so it must be off"
        if widgets[name] in ("date", "date-time"):
            assert param.value is None and "Empty: " in param.description, f"{name}: say what empty means"
    # The overrides: in a section of their own, saying that {} is the Variable's, with every key's default.
    overrides = params[OVERRIDES]
    help_md = overrides.schema["description_md"]
    assert overrides.description is None  # else the form shows the plain description, not the Markdown
    assert "`{}`: every setting is the mparticle_backfill Variable's" in help_md
    assert "max_age_days: 14 (1 to 30)" in help_md and "coalesce: true" in help_md
    assert "mparticle_backfill Variable" in overrides.schema["section"]
    # What the overrides' schema refuses, the API refuses when Trigger is pressed; what it takes, it takes.
    overrides = copy.copy(overrides)  # resolve() keeps the value it was given
    overrides.resolve({"coalesce": False, "max_age_days": 7, "fixes": [{"name": "r", "then": [{"rename_event": "S"}]}]})
    for refused in (
        {"max_age_days": 45},  # out of range: refused, not clamped
        {"shards": 0},
        {"max_age_day": 7},  # a misspelt key
        {"dry_run": True},  # a per-run choice: its own field
        {"coalesce": "no"},
        {"fixes": [{"name": "r", "then": [{"rename_evnt": "Sign Up"}]}]},
        {"routes": [{"when": [{"field": "device_info.platform", "equals": "iOS"}]}]},
    ):
        with pytest.raises(ParamValidationError):
            overrides.resolve(refused)


# What the pure core may not import: Airflow, and anything that does network or process I/O.
FORBIDDEN_IN_CORE = {
    "airflow", "boto3", "botocore", "requests", "urllib3", "http", "socket", "ssl", "tenacity",
    "concurrent", "threading", "subprocess", "multiprocessing", "asyncio", "aiohttp", "urllib",
}  # fmt: skip


def imported_modules(path) -> set[str]:
    import ast

    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {name.split(".")[0] for name in names}


def test_core_imports_no_airflow_and_no_network():
    core = ROOT / "include" / "mparticle_backfill"
    modules = sorted(core.rglob("*.py"))
    assert len(modules) > 10
    for path in modules:
        bad = imported_modules(path) & FORBIDDEN_IN_CORE
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_the_forbidden_import_check_sees_nested_imports(tmp_path):
    module = tmp_path / "nested.py"
    module.write_text("def f():\n    from airflow.sdk import BaseHook\n    import requests.adapters\n")
    assert imported_modules(module) & FORBIDDEN_IN_CORE == {"airflow", "requests"}


def test_parsing_the_dag_imports_no_heavy_library():
    """The DAG file is parsed every few seconds: it must not import boto3, requests or pandas."""
    import subprocess
    import sys

    probe = (
        "import runpy, sys; runpy.run_path(sys.argv[1]); "
        "print(','.join(m for m in ('boto3', 'botocore', 'requests', 'pandas') if m in sys.modules))"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe, str(ROOT / "dags" / "mparticle_quarantine_backfill.py")],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout.strip().splitlines()[-1:]  # fmt: skip
    assert found in ([], [""]), f"parsing the DAG imported {found}"
