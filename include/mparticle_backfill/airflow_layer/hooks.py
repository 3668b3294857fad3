"""MParticleEventsHook: the Events API from an Airflow ``http`` connection."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from functools import cached_property
from typing import Any

from airflow.sdk import BaseHook

from ..errors import BackfillError, CredentialsRefused
from ..events_api import ClientSettings, EventsApiClient, RequestResult
from ..pack import BulkRequest


class MParticleEventsHook(BaseHook):
    """Sends replay batches to mParticle's Events API.

    Connection (type ``http``, default id ``mparticle_events_api``):

    - **host**: the pod as a whole URL (``https://s2s.us1.mparticle.com``), or a bare host with
      **schema** (default ``https``) and **port**;
    - **login**: the input's API key; **password**: its API secret;
    - **extra** (all optional): ``batches_per_second`` (default 250), ``max_workers`` (4),
      ``timeout_seconds`` (30), ``max_retries`` (8).

    :param mparticle_conn_id: the connection id.
    """

    conn_name_attr = "mparticle_conn_id"
    default_conn_name = "mparticle_events_api"
    conn_type = "http"
    hook_name = "mParticle Events API"

    def __init__(self, mparticle_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mparticle_conn_id = mparticle_conn_id

    @cached_property
    def client_settings(self) -> ClientSettings:
        connection = self.get_connection(self.mparticle_conn_id)
        host = (connection.host or "").strip().rstrip("/")
        if "://" not in host:
            schema = connection.schema or "https"
            host = f"{schema}://{host}" + (f":{connection.port}" if connection.port else "")
        elif connection.port and host.count(":") == 1:
            host = f"{host}:{connection.port}"
        extra = connection.extra_dejson
        return ClientSettings(
            base_url=host,
            api_key=connection.login or "",
            api_secret=connection.password or "",
            batches_per_second=float(extra.get("batches_per_second", 250)),
            max_workers=int(extra.get("max_workers", 4)),
            timeout_seconds=float(extra.get("timeout_seconds", 30)),
            max_retries=int(extra.get("max_retries", 8)),
        )

    def get_conn(self) -> EventsApiClient:
        return EventsApiClient(self.client_settings)

    def send_requests(
        self, requests_to_send: Iterable[BulkRequest], on_result: Callable[[RequestResult], None] | None = None
    ) -> Iterator[RequestResult]:
        """Send packed requests; yields each request's result (accepted and rejected batches)."""
        client = self.get_conn()
        try:
            yield from client.send(requests_to_send, on_result)
        finally:
            client.close()

    def test_connection(self) -> tuple[bool, str]:
        """Post an empty bulk request: tells whether the pod answers and accepts the key and secret."""
        try:
            client = self.get_conn()
            client.check_credentials()
            client.close()
        except CredentialsRefused as error:
            return False, str(error)
        except BackfillError as error:
            return False, str(error)
        return True, f"Connected to {client.url}; the API key and secret were accepted"
