"""MParticleEventsHook: mParticle's Events API from an Airflow ``http`` connection."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from functools import cached_property
from typing import Any

from airflow.providers.http.hooks.http import HttpHook

from mparticle_backfill.errors import BackfillError, InvalidSettings
from mparticle_backfill.send import BulkRequest

from .events_api_client import ClientSettings, EventsApiClient, RequestResult

# Connection extras that tune the client; HttpHook would send any other extra key as an HTTP header.
CLIENT_EXTRAS = {
    "batches_per_second": 250.0,  # for the whole connection: every sender together
    "senders": 2,  # send tasks that may run at once (the slots of the mparticle_events_api pool)
    "max_workers": 4,
    "timeout_seconds": 30.0,
    "max_retries": 8,
}


class MParticleEventsHook(HttpHook):
    """Sends replay batches to mParticle's Events API (``POST /v2/bulkevents``).

    Builds on :class:`HttpHook`'s connection handling (URL from host, schema and port; Basic auth from
    login and password; ``proxies``, ``verify``, ``cert``, ``trust_env`` from the extra). Connection
    (type ``mparticle``, registered by this package as an Airflow provider, or plain ``http``; default id
    ``mparticle_events_api``):

    - **host**: the pod as a whole URL (``https://s2s.us1.mparticle.com``), or a bare host with
      **schema** (default ``https``) and **port**;
    - **login**: the input's API key; **password**: its API secret;
    - **extra** (all optional): ``batches_per_second`` (default 250: the rate of the whole connection,
      under mParticle's default limit of 270), ``senders`` (2: how many send tasks may run at once,
      the slots of the ``mparticle_events_api`` pool; each paces itself at ``batches_per_second /
      senders``, so together they stay under the limit), ``max_workers`` (4), ``timeout_seconds`` (30),
      ``max_retries`` (8), and HttpHook's own keys.

    :param mparticle_conn_id: the connection id.
    """

    conn_name_attr = "mparticle_conn_id"
    default_conn_name = "mparticle_events_api"
    conn_type = "mparticle"
    hook_name = "mParticle Events API"

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """The connection form for type ``mparticle``: what each field holds."""
        return {
            "hidden_fields": [],
            "relabeling": {"login": "API key", "password": "API secret", "host": "Pod URL"},
            "placeholders": {
                "host": "https://s2s.us1.mparticle.com",
                "login": "the input's (Custom Feed's) API key",
                "extra": '{"batches_per_second": 250, "max_workers": 4}',
            },
        }

    def __init__(self, mparticle_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(method="POST", http_conn_id=mparticle_conn_id, **kwargs)
        self.mparticle_conn_id = mparticle_conn_id

    def _set_base_url(self, connection: Any) -> None:
        if "://" not in (connection.host or "") and not connection.schema:
            connection.schema = "https"  # mParticle's pods answer on https only
        super()._set_base_url(connection)
        self.base_url = self.base_url.rstrip("/").removesuffix("/v2")

    @cached_property
    def client_settings(self) -> ClientSettings:
        connection = self.get_connection(self.mparticle_conn_id)
        self._set_base_url(connection)
        extra = {**CLIENT_EXTRAS, **{k: v for k, v in connection.extra_dejson.items() if k in CLIENT_EXTRAS}}
        senders = int(extra["senders"])
        if senders < 1:
            raise InvalidSettings("senders", f"must be at least 1 (the pool's slots), got {senders}")
        return ClientSettings(
            base_url=self.base_url,
            api_key=connection.login or "",
            api_secret=connection.password or "",
            batches_per_second=float(extra["batches_per_second"]) / senders,
            max_workers=int(extra["max_workers"]),
            timeout_seconds=float(extra["timeout_seconds"]),
            max_retries=int(extra["max_retries"]),
        )

    def get_conn(self, headers: dict[Any, Any] | None = None, extra_options: dict[str, Any] | None = None) -> Any:
        """An :class:`EventsApiClient` over HttpHook's session (the connection's proxies, TLS and auth)."""
        settings = self.client_settings  # validates key, secret and extras first, naming what is wrong
        session = super().get_conn(headers, extra_options)
        for name in CLIENT_EXTRAS:
            session.headers.pop(name, None)
        return EventsApiClient(settings, session)

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
            try:
                client.check_credentials()
            finally:
                client.close()
        except BackfillError as error:
            return False, str(error)
        return True, f"Connected to {client.url}; the API key and secret were accepted"
