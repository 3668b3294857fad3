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
    order = ["plan_partition", "extract", "filter_by_age", "transform", "dedupe_check", "send", "report"]
    assert set(dag.task_ids) == {*order, "release_partition"}
    for upstream, downstream in itertools.pairwise(order):
        assert downstream in dag.get_task(upstream).downstream_task_ids
    assert set(dag.get_task("report").upstream_task_ids) == set(order[:-1])


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
    assert dag.max_active_runs >= 1 and not dag.catchup


def test_every_setting_is_a_param(dag):
    from include.mparticle_backfill.settings import SETTINGS

    assert set(dag.params.keys()) == set(SETTINGS)
    assert all(dag.params.get_param(name).value is None for name in SETTINGS)


def test_core_does_not_import_airflow():
    import ast

    core = ROOT / "include" / "mparticle_backfill"
    for path in core.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names.append(node.module)
            assert not any(n.split(".")[0] == "airflow" for n in names), path.name
