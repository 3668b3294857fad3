"""Settings: merged from the Variable and the run, validated with a message naming the setting."""

from __future__ import annotations

from datetime import date, datetime, timezone

import pytest

from mparticle_backfill.errors import FixRuleError, InvalidSettings
from mparticle_backfill.settings import SETTINGS, parse_settings

BASE = {"bucket": "acme-quarantine", "prefix": "mparticle/quarantine/"}


def test_defaults_and_derived_state_location():
    settings = parse_settings(BASE)
    assert settings.prefix == "mparticle/quarantine"
    assert settings.state_bucket == "acme-quarantine"
    assert settings.state_prefix == "mparticle/quarantine/_backfill"
    assert settings.partition_layout.state_prefix == "mparticle/quarantine/_backfill"
    assert settings.max_age_days == 14 and settings.replay_blocked_events and not settings.dry_run


def test_run_overrides_win_and_none_means_unset():
    settings = parse_settings(
        {**BASE, "max_age_days": 10, "dry_run": False},
        {
            "max_age_days": 7,
            "dry_run": True,
            "environment": None,
            "partition_date": "2026-11-20",
            "reference_time": "2026-11-21T06:00:00Z",
        },
    )
    assert settings.max_age_days == 7 and settings.dry_run
    assert settings.partition_date == date(2026, 11, 20)
    assert settings.reference_time == datetime(2026, 11, 21, 6, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("override", "setting"),
    [
        pytest.param({"bucket": "Not_A_Bucket"}, "bucket", id="bucket"),
        pytest.param({"max_age_days": 45}, "max_age_days", id="age-range"),
        pytest.param({"max_age_days": "two"}, "max_age_days", id="age-type"),
        pytest.param({"dry_run": "maybe"}, "dry_run", id="bool"),
        pytest.param({"environment": "staging"}, "environment", id="environment"),
        pytest.param({"plan_version": "latest"}, "plan_version", id="plan-version"),
        pytest.param({"partition_date": "20/11/2026"}, "partition_date", id="date"),
        pytest.param({"reference_time": "2026-11-20T06:00:00"}, "reference_time", id="naive-time"),
        pytest.param({"max_age_day": 3}, "max_age_day", id="typo"),
        pytest.param({"fixes": "[not json"}, "fixes", id="fixes-json"),
        pytest.param({"files_per_chunk": 0}, "files_per_chunk", id="chunk"),
        pytest.param({"layout": "hourly"}, "layout", id="layout"),
        pytest.param({"date_folders": False}, "date_folders", id="replaced-by-layout"),
    ],
)
def test_invalid_settings_name_the_setting(override, setting):
    with pytest.raises(InvalidSettings) as error:
        parse_settings(BASE, override)
    assert error.value.setting == setting
    assert setting in str(error.value)


def test_fix_rules_are_validated_with_the_settings():
    with pytest.raises(FixRuleError, match="#1 'x'"):
        parse_settings(BASE, {"fixes": '[{"name": "x", "then": [{"nope": 1}]}]'})


def test_settings_round_trip_to_json():
    settings = parse_settings(
        BASE, {"fixes": [{"name": "x", "then": [{"rename_event": "y"}]}], "partition_date": "2026-11-20"}
    )
    as_json = settings.to_json()
    assert set(as_json) == set(SETTINGS)
    assert parse_settings(as_json) == settings


@pytest.mark.parametrize(
    ("name", "value", "why"),
    [
        pytest.param("partition_date", "2026-11-20", "process that one date", id="partition_date"),
        pytest.param("dry_run", True, "would send nothing", id="dry_run"),
        pytest.param("force", True, "would resend", id="force"),
        pytest.param("reference_time", "2026-11-21T06:00:00Z", "would end at that one moment", id="reference_time"),
    ],
)
def test_a_standing_configuration_may_not_set_a_per_run_choice(name, value, why):
    from mparticle_backfill.settings import check_standing_settings

    check_standing_settings({**BASE, name: None}, "the Variable")  # empty: fine
    if isinstance(value, bool):
        check_standing_settings({**BASE, name: False}, "the Variable")  # its default: fine
    with pytest.raises(InvalidSettings, match=rf"'{name}': is a per-run choice.*set in the Variable, .*{why}"):
        check_standing_settings({**BASE, name: value}, "the Variable")


@pytest.mark.parametrize(
    ("params", "changes"),
    [
        pytest.param(
            {"partition_date": None, "dry_run": False, "force": False, "reference_time": None, "overrides": {}},
            {"dry_run": False, "force": False},
            id="untouched-form",
        ),
        pytest.param({}, {}, id="scheduled-without-conf"),
        pytest.param(
            {"dry_run": True, "overrides": {"coalesce": False, "max_age_days": 7, "environment": None}},
            {"dry_run": True, "coalesce": False, "max_age_days": 7},
            id="form-overrides",
        ),
        pytest.param(
            {"coalesce": False, "files_per_chunk": 1, "dry_run": True, "overrides": {}},
            {"coalesce": False, "files_per_chunk": 1, "dry_run": True},
            id="flat-keys-of-api-callers",
        ),
        pytest.param(
            {"layout": "flat", "overrides": {"coalesce": False}, "environment": None},
            {"layout": "flat", "coalesce": False},
            id="flat-and-overrides",
        ),
        pytest.param({"overrides": None}, {}, id="overrides-null"),
    ],
)
def test_a_run_changes_what_its_conf_sets_and_nothing_else(params, changes):
    from mparticle_backfill.settings import run_overrides

    assert run_overrides(params) == changes


def test_an_untouched_trigger_form_runs_with_the_variables_settings():
    from mparticle_backfill.settings import run_overrides

    variable = {**BASE, "max_age_days": 20, "coalesce": False, "replay_blocked_events": False}
    untouched = {"partition_date": None, "dry_run": False, "force": False, "reference_time": None, "overrides": {}}
    assert parse_settings(variable, run_overrides(untouched)) == parse_settings(variable)


@pytest.mark.parametrize(
    ("params", "setting", "message"),
    [
        pytest.param(
            {"coalesce": False, "overrides": {"coalesce": True}},
            "coalesce",
            r"'coalesce': is set twice in the run conf: as a key of its own \(False\) and inside overrides \(True\)",
            id="twice",
        ),
        pytest.param(
            {"max_age_days": 7, "overrides": {"max_age_days": 7}}, "max_age_days", r"set twice", id="twice-same-value"
        ),
        pytest.param(
            {"overrides": {"dry_run": True}}, "dry_run", r"per-run choice: give it as a field", id="per-run-inside"
        ),
        pytest.param({"overrides": '{"coalesce": false}'}, "overrides", r"must be a JSON object", id="not-an-object"),
    ],
)
def test_a_conf_that_is_ambiguous_is_refused_naming_the_setting(params, setting, message):
    from mparticle_backfill.settings import run_overrides

    with pytest.raises(InvalidSettings, match=message) as error:
        run_overrides(params)
    assert error.value.setting == setting


@pytest.mark.parametrize(
    ("run_type", "refused"),
    [
        pytest.param("scheduled", True, id="scheduled"),
        pytest.param("backfill", True, id="backfill"),
        pytest.param("manual", False, id="manual"),
        pytest.param("asset_triggered", False, id="asset"),
        pytest.param(None, False, id="unknown"),
    ],
)
def test_a_run_of_its_own_date_refuses_another_date(run_type, refused):
    from mparticle_backfill.settings import check_run_date

    check_run_date(None, run_type, date(2026, 11, 18))  # no partition_date: every run is fine
    if not refused:
        check_run_date(date(2026, 11, 15), run_type, date(2026, 11, 18))
        return
    with pytest.raises(
        InvalidSettings, match=r"2026-11-15 was given to a \w+ run, which processes its own date \(2026-11-18"
    ):
        check_run_date(date(2026, 11, 15), run_type, date(2026, 11, 18))
