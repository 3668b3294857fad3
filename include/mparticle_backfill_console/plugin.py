"""The Airflow plugin of the backfill console, registered by the ``airflow.plugins`` entry point of the wheel.

The FastAPI app (:mod:`.app`) is mounted in the api-server at ``/mparticle-backfill``; the external view shows
its page in the DAG view as the tab **Backfill console** (``/dags/<dag_id>/plugin/backfill-console``). Every
route of the app requires Airflow's own authentication and permission to read the DAG's runs. No Node build
step: the page is server-rendered HTML and SVG.

Airflow loads this class through ``pyproject.toml``'s ``[project.entry-points."airflow.plugins"]`` wherever
the package is installed, so nothing of the console goes into the plugins folder: a plugins-folder file that
imported this class would register it a second time (the plugins manager keeps the first it finds and
records the other as an import error).
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from .app import MOUNT, app

# Relative to Airflow's base URL (no leading slash), so the tab works behind a proxy's sub-path too.
CONSOLE_HREF = f"{MOUNT.strip('/')}/dags/{{DAG_ID}}/console"
URL_ROUTE = "backfill-console"


class MParticleBackfillConsolePlugin(AirflowPlugin):
    """The backfill console: per quarantine date, its state, days left in the replay window, the counts."""

    name = "mparticle_backfill_console"
    fastapi_apps = [{"app": app, "url_prefix": MOUNT, "name": "mParticle backfill console"}]
    external_views = [
        {
            "name": "Backfill console",
            "href": CONSOLE_HREF,
            "destination": "dag",
            "url_route": URL_ROUTE,
        }
    ]
