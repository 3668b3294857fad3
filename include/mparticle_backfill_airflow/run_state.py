"""What Airflow says of the run that holds a partition's lock, as the lock's rules need it."""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus

from airflow.sdk.exceptions import AirflowRuntimeError

RunState = Callable[[str, str], "str | None"]


def run_state_of(get_dagrun_state: Callable[[str, str], str]) -> RunState:
    """A run-state callback for :func:`.tasks.acquire_partition` over the task instance's
    ``get_dagrun_state`` (the execution API).

    That API answers 404 for a run it has no record of (deleted, or of a database that was reset): such a
    run is not running, so the answer is ``"missing"`` and its lock is taken over at once
    (:data:`mparticle_backfill.partition_lock.GONE_STATES`). Any other error is raised: Airflow could not
    tell, and the lock's heartbeat age decides.
    """

    def state(dag_id: str, run_id: str) -> str | None:
        try:
            state = get_dagrun_state(dag_id, run_id)
        except AirflowRuntimeError as error:
            detail = error.error.detail if isinstance(error.error.detail, dict) else {}
            if detail.get("status_code") == HTTPStatus.NOT_FOUND:
                return "missing"
            raise
        # A DagRunState (a str enum, whose str() is "DagRunState.RUNNING"), or its value.
        return str(getattr(state, "value", state))

    return state
