"""Several quarantine outputs: one DAG per entry of a configuration file, validated when the DAG file is parsed.

An organisation with several workspaces has several Quarantine outputs, each with its own bucket,
settings, state, credentials and routes. ``dags/mparticle_backfills.yaml`` (or the file the environment
variable ``MPARTICLE_BACKFILLS_CONFIG`` names) lists them::

    backfills:
      - name: eu_workspace              # DAG mparticle_quarantine_backfill__eu_workspace
        settings: {bucket: acme-eu-quarantine, prefix: mparticle, data_plan: "api:eu_plan"}
        aws_conn_id: mparticle_quarantine_s3_eu
        events_api_conn_id: mparticle_events_api_eu
        pool: mparticle_events_api_eu   # its own senders' pool (or a shared one)
        tags: [eu]

Each entry's ``settings`` are its base settings; its Variable (``mparticle_backfill__<name>``, optional)
and the run's conf override them, as the single DAG's Variable does. Without the file, the single DAG of
today (``mparticle_quarantine_backfill``, Variable ``mparticle_backfill``) is built, unchanged.

Reading the file is the only I/O: parsing validates every entry with the same rules as a run, without
reaching S3 or any API. A broken entry is left out, and ``dags/mparticle_backfills_check.py`` fails to
import naming it, so it shows as an import error in the UI while the other entries' DAGs load.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mparticle_backfill.errors import InvalidSettings
from mparticle_backfill.settings import check_standing_settings, parse_settings

CONFIG_ENV = "MPARTICLE_BACKFILLS_CONFIG"
DEFAULT_DAG_ID = "mparticle_quarantine_backfill"
DEFAULT_VARIABLE = "mparticle_backfill"
DEFAULT_S3_CONN_ID = "mparticle_quarantine_s3"
DEFAULT_EVENTS_API_CONN_ID = "mparticle_events_api"
DEFAULT_POOL = "mparticle_events_api"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_]{0,62}$")
_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,250}$")
_KEYS = {"name", "settings", "aws_conn_id", "events_api_conn_id", "pool", "tags", "variable", "description"}


@dataclass(frozen=True)
class Backfill:
    """One quarantine output's DAG: where its data and state are, which connections and pool it uses."""

    dag_id: str
    variable: str
    settings: dict[str, Any] = field(default_factory=dict)
    aws_conn_id: str = DEFAULT_S3_CONN_ID
    events_api_conn_id: str = DEFAULT_EVENTS_API_CONN_ID
    pool: str = DEFAULT_POOL
    tags: tuple[str, ...] = ()
    description: str = ""

    def merged_settings(self, variable: Any) -> Any:
        """The entry's settings under its Variable's (a Variable that is not an object is passed on as is,
        for the settings parser to refuse with its own message)."""
        if variable is None or isinstance(variable, Mapping):
            return {**self.settings, **(variable or {})}
        return variable


@dataclass(frozen=True)
class Configuration:
    """The backfills to build, and the entries that could not be (name -> why)."""

    backfills: tuple[Backfill, ...]
    broken: dict[str, str]
    source: str = ""


def config_path(dags_folder: Path) -> Path:
    return Path(os.environ.get(CONFIG_ENV) or dags_folder / "mparticle_backfills.yaml")


def load(dags_folder: Path | str) -> Configuration:
    """The configured backfills; without a configuration file, the single default DAG."""
    path = config_path(Path(dags_folder))
    if not path.exists():
        return Configuration((Backfill(DEFAULT_DAG_ID, DEFAULT_VARIABLE),), {})
    import yaml

    try:
        document = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        return Configuration((), {str(path): f"not valid YAML: {error}"}, str(path))
    return parse(document, str(path))


def parse(document: Any, source: str = "") -> Configuration:
    """Validate every entry on its own: a broken one never takes the others down."""
    entries = document.get("backfills") if isinstance(document, Mapping) else None
    if not isinstance(entries, list) or not entries:
        return Configuration((), {source or "configuration": "must have a non-empty list 'backfills'"}, source)
    built: list[Backfill] = []
    broken: dict[str, str] = {}
    seen: set[str] = set()
    for position, entry in enumerate(entries, start=1):
        label = (
            entry.get("name") if isinstance(entry, Mapping) and isinstance(entry.get("name"), str) else f"#{position}"
        )
        try:
            backfill = _entry(entry)
            if backfill.dag_id in seen:
                raise ValueError("another entry has the same name")
            seen.add(backfill.dag_id)
            built.append(backfill)
        except (ValueError, InvalidSettings) as error:
            broken[label] = str(error)
    return Configuration(tuple(built), broken, source)


def _entry(entry: Any) -> Backfill:
    if not isinstance(entry, Mapping):
        raise ValueError("an entry must be a mapping")
    unknown = set(entry) - _KEYS
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}; an entry has {', '.join(sorted(_KEYS))}")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"name must be lowercase letters, digits and _ (at most 63), got {name!r}")
    settings = entry.get("settings") or {}
    if not isinstance(settings, Mapping):
        raise ValueError("settings must be a mapping")
    check_standing_settings(settings, "mparticle_backfills.yaml")
    parse_settings(settings)  # the same validation a run makes, here without any I/O
    ids = {key: entry.get(key) for key in ("aws_conn_id", "events_api_conn_id", "pool", "variable")}
    for key, value in ids.items():
        if value is not None and (not isinstance(value, str) or not _ID.match(value)):
            raise ValueError(f"{key} must be an Airflow id, got {value!r}")
    tags = entry.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(tag, str) and tag for tag in tags):
        raise ValueError("tags must be a list of strings")
    return Backfill(
        dag_id=f"{DEFAULT_DAG_ID}__{name}",
        variable=ids["variable"] or f"{DEFAULT_VARIABLE}__{name}",
        settings=dict(settings),
        aws_conn_id=ids["aws_conn_id"] or DEFAULT_S3_CONN_ID,
        events_api_conn_id=ids["events_api_conn_id"] or DEFAULT_EVENTS_API_CONN_ID,
        pool=ids["pool"] or DEFAULT_POOL,
        tags=(name, *tags),
        description=str(entry.get("description") or ""),
    )


def broken_message(configuration: Configuration) -> str:
    """What the check DAG file raises: every broken entry, named, with why."""
    lines = [f"{len(configuration.broken)} backfill(s) in {configuration.source} could not be built:"]
    lines += [f"  - {name}: {problem}" for name, problem in configuration.broken.items()]
    lines.append("The other entries' DAGs are built; fix these and the file is read again.")
    return "\n".join(lines)
