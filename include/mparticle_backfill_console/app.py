"""The console's FastAPI app, mounted by the api-server at ``/mparticle-backfill`` (a thin shell over
:mod:`.overview`, :mod:`.page` and :mod:`.sources`).

Plugin apps are not behind Airflow's auth by themselves: every route here depends on the core API's own
``requires_access_dag("GET", DagAccessEntity.RUN)``, which authenticates the caller (the UI's ``_token``
cookie or a bearer token, :func:`airflow.api_fastapi.core_api.security.get_user`) and asks the configured
auth manager whether that user may read the DAG's runs: 401 without a session or token, 403 for a user who
may not read the DAG. The app has no other route, and no OpenAPI or docs page.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from typing import Any

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import requires_access_dag
from botocore.exceptions import BotoCoreError, ClientError
from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse

from mparticle_backfill.errors import InvalidSettings
from mparticle_backfill.settings import BackfillSettings, parse_settings
from mparticle_backfill_airflow import backfills
from mparticle_backfill_airflow.links import s3_browser_url

from .overview import Overview, build_overview
from .page import render_message, render_page
from .sources import S3Snapshots, Snapshot, dag_run_rows

log = logging.getLogger(__name__)

MOUNT = "/mparticle-backfill"  # where the api-server mounts the app (the plugin's url_prefix)
NO_STORE = {"Cache-Control": "no-store"}

snapshots = S3Snapshots()


def configured_backfills() -> dict[str, backfills.Backfill]:
    """The backfill DAGs the DAG file builds (one, or one per entry of mparticle_backfills.yaml), by DAG id."""
    from airflow.configuration import conf

    return {backfill.dag_id: backfill for backfill in backfills.load(conf.get("core", "dags_folder")).backfills}


def warm_up() -> None:
    """Read S3 once when the api-server starts, so that the first person to open the tab need not wait."""
    for backfill in configured_backfills().values():
        try:
            snapshots.get(read_settings(backfill), backfill.aws_conn_id)
        except Exception as error:  # the page says what is wrong when someone opens it
            log.info("Backfill console: S3 of %s not read at start (%s)", backfill.dag_id, type(error).__name__)


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    threading.Thread(target=warm_up, name="backfill-console-warm-up", daemon=True).start()
    yield


app = FastAPI(title="mParticle backfill console", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)

# The core API's own dependency: the caller must be logged in and may read the DAG's runs.
can_read_dag_runs = Depends(requires_access_dag("GET", DagAccessEntity.RUN))


class ConsoleUnavailable(Exception):
    """The page cannot be drawn (settings missing or invalid, S3 unreachable): said to the user as is."""


def read_settings(backfill: backfills.Backfill) -> BackfillSettings:
    """The DAG's settings (its entry's, under its Variable), validated as the DAG validates them."""
    from airflow.sdk import Variable

    name = backfill.variable
    try:
        variable = Variable.get(name, default=None, deserialize_json=True)
    except ValueError:
        raise ConsoleUnavailable(f"The Variable {name} is not a JSON object.") from None
    if variable is None and not backfill.settings:
        raise ConsoleUnavailable(f"The Variable {name} is not set: the console needs its bucket.")
    try:
        return parse_settings(backfill.merged_settings(variable))
    except InvalidSettings as error:
        raise ConsoleUnavailable(f"The settings of {backfill.dag_id} (Variable {name}) are invalid: {error}") from None


def airflow_base(request: Request) -> str:
    """The base path of Airflow's UI, as this request reached the app (``/``, or e.g. ``/airflow/``)."""
    root = str(request.scope.get("root_path", "")).removesuffix(MOUNT)
    return f"{root.rstrip('/')}/"


@dataclass(frozen=True)
class Console:
    """One drawing of the page: the figures, the S3 snapshot they come from, the settings."""

    overview: Overview
    snapshot: Snapshot
    settings: BackfillSettings
    notice: str


def console_for(backfill: backfills.Backfill, request: Request, session: Any, refresh: bool) -> Console:
    dag_id, conn_id = backfill.dag_id, backfill.aws_conn_id
    settings = read_settings(backfill)
    try:
        snapshot, notice = snapshots.get(settings, conn_id, refresh=refresh)
    except (BotoCoreError, ClientError) as error:
        what = type(error).__name__
        if isinstance(error, ClientError):
            what += f" {error.response.get('Error', {}).get('Code', '')}".rstrip()
        log.warning("Backfill console: S3 could not be read: %s", what)
        raise ConsoleUnavailable(f"S3 could not be read through the connection {conn_id} ({what}).") from None
    overview = build_overview(
        dag_id=dag_id,
        quarantine=snapshot.quarantine,
        reports=snapshot.reports,
        airflow_runs=dag_run_rows(session, dag_id),
        locks=snapshot.locks,
        state_bucket=settings.state_bucket,
        state_prefix=settings.state_prefix,
        now=datetime.now(timezone.utc),
        max_age_days=settings.max_age_days,
        s3_url=partial(s3_browser_url, endpoint_url=snapshot.endpoint_url),
        airflow_base=airflow_base(request),
    )
    return Console(overview, snapshot, settings, notice)


def _backfill(dag_id: str) -> tuple[backfills.Backfill | None, str]:
    """The backfill a DAG id names, or why the console does not show that DAG."""
    configured = configured_backfills()
    if dag_id in configured:
        return configured[dag_id], ""
    return None, f"The backfill console shows the DAG(s) {', '.join(sorted(configured))}; {dag_id} is another DAG."


@app.get("/dags/{dag_id}/console", response_class=HTMLResponse, dependencies=[can_read_dag_runs])
def console(dag_id: str, request: Request, session: SessionDep, refresh: bool = False) -> HTMLResponse:
    """The page: every quarantine date, its state, days left, the latest run's counts, history, links."""
    backfill, other = _backfill(dag_id)
    if backfill is None:
        return HTMLResponse(render_message("Backfill console", other), headers=NO_STORE)
    try:
        drawn = console_for(backfill, request, session, refresh)
    except ConsoleUnavailable as error:
        return HTMLResponse(render_message("Backfill console", str(error)), status_code=503, headers=NO_STORE)
    html = render_page(
        drawn.overview,
        source=f"s3://{drawn.settings.bucket}/{drawn.settings.prefix}".rstrip("/"),
        loaded_at=drawn.snapshot.loaded_at,
        refresh_url="console?refresh=true",
        json_url="console.json",
        notice=drawn.notice,
    )
    return HTMLResponse(html, headers=NO_STORE)


@app.get("/dags/{dag_id}/console.json", dependencies=[can_read_dag_runs])
def console_json(dag_id: str, request: Request, session: SessionDep, refresh: bool = False) -> JSONResponse:
    """The page's figures as JSON (counts, dates, reasons, links)."""
    backfill, other = _backfill(dag_id)
    if backfill is None:
        return JSONResponse({"detail": other}, status_code=404, headers=NO_STORE)
    try:
        drawn = console_for(backfill, request, session, refresh)
    except ConsoleUnavailable as error:
        return JSONResponse({"detail": str(error)}, status_code=503, headers=NO_STORE)
    body = drawn.overview.to_json() | {"s3_read_at": drawn.snapshot.loaded_at.isoformat(), "notice": drawn.notice}
    return JSONResponse(body, headers=NO_STORE)
