"""Load airflow_settings.yaml (astro CLI format) into plain Airflow's metadata DB: connections, variables, pools."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml


def load(path: Path) -> None:
    # A loader writes metadata rows: the ORM models are the tool here (the SDK's are read-only views).
    from airflow.models import Connection, Pool, Variable
    from airflow.utils.session import create_session

    settings = (yaml.safe_load(path.read_text()) or {}).get("airflow", {})
    with create_session() as session:
        for item in settings.get("connections") or []:
            session.query(Connection).filter(Connection.conn_id == item["conn_id"]).delete()  # noqa: AIR311
            extra = item.get("conn_extra")
            session.add(
                Connection(  # noqa: AIR311
                    conn_id=item["conn_id"],
                    conn_type=item["conn_type"],
                    host=item.get("conn_host"),
                    schema=item.get("conn_schema"),
                    login=item.get("conn_login"),
                    password=item.get("conn_password"),
                    port=item.get("conn_port"),
                    extra=json.dumps(extra) if isinstance(extra, dict) else extra,
                )
            )
    for item in settings.get("pools") or []:
        Pool.create_or_update_pool(
            item["pool_name"], item["pool_slot"], item.get("pool_description", ""), include_deferred=False
        )
    for item in settings.get("variables") or []:
        Variable.set(item["variable_name"], item["variable_value"])  # noqa: AIR311
    print(
        f"Loaded {len(settings.get('connections') or [])} connections, {len(settings.get('variables') or [])} "
        f"variables, {len(settings.get('pools') or [])} pools from {path}"
    )


if __name__ == "__main__":
    load(Path(sys.argv[1] if len(sys.argv) > 1 else "airflow_settings.yaml"))
