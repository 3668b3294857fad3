"""The several-backfills configuration: every entry validated on its own when the DAG file is parsed."""

from __future__ import annotations

from mparticle_backfill_airflow import backfills


def test_a_valid_entry_gets_its_own_dag_variable_and_connections():
    config = backfills.parse(
        {"backfills": [{"name": "eu", "settings": {"bucket": "acme-b"}, "aws_conn_id": "s3_eu", "tags": ["x"]}]},
        "f.yaml",
    )
    assert config.broken == {}
    (eu,) = config.backfills
    assert eu.dag_id == "mparticle_quarantine_backfill__eu"
    assert eu.variable == "mparticle_backfill__eu"
    assert (eu.aws_conn_id, eu.events_api_conn_id, eu.pool) == ("s3_eu", "mparticle_events_api", "mparticle_events_api")
    assert eu.tags == ("eu", "x")


def test_each_broken_entry_is_named_with_why_and_the_others_still_build():
    config = backfills.parse(
        {
            "backfills": [
                {"name": "good", "settings": {"bucket": "acme-b"}},
                {"name": "good", "settings": {"bucket": "acme-c"}},
                {"name": "Bad Name"},
                {"name": "typo", "setings": {}},
                {"name": "old", "settings": {"bucket": "acme-b", "max_age_days": 45}},
                "not a mapping",
                {"name": "dated", "settings": {"bucket": "acme-b", "partition_date": "2026-11-20"}},
            ]
        },
        "f.yaml",
    )
    assert [b.dag_id for b in config.backfills] == ["mparticle_quarantine_backfill__good"]
    assert "same name" in config.broken["good"]
    assert "lowercase" in config.broken["Bad Name"]
    assert "setings" in config.broken["typo"]
    assert "max_age_days" in config.broken["old"]
    assert "mapping" in config.broken["#6"]
    assert "partition_date" in config.broken["dated"] and "per-run choice" in config.broken["dated"]
    message = backfills.broken_message(config)
    assert "6 backfill(s) in f.yaml" in message and "typo" in message


def test_a_file_without_entries_or_not_yaml_is_one_clear_problem(tmp_path, monkeypatch):
    assert backfills.parse({"backfills": []}, "f.yaml").broken == {"f.yaml": "must have a non-empty list 'backfills'"}
    path = tmp_path / "mparticle_backfills.yaml"
    path.write_text("backfills: [unclosed")
    config = backfills.load(tmp_path)
    assert config.backfills == () and "not valid YAML" in config.broken[str(path)]


def test_without_a_file_the_single_default_dag(tmp_path, monkeypatch):
    monkeypatch.delenv(backfills.CONFIG_ENV, raising=False)
    (only,) = backfills.load(tmp_path).backfills
    assert (only.dag_id, only.variable) == ("mparticle_quarantine_backfill", "mparticle_backfill")
