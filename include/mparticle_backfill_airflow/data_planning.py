"""Data Planning API: fetch mParticle data plans (OAuth client credentials, token reuse, retries, clear errors).

Authentication as mParticle documents it on https://docs.mparticle.com/developers/dataplanning-api/
(and https://docs.mparticle.com/developers/platform/): ``POST https://sso.auth.mparticle.com/oauth/token``,
JSON body ``{"client_id", "client_secret", "audience": "https://api.mparticle.com",
"grant_type": "client_credentials"}``, answered by ``{"access_token", "expires_in": 28800, "token_type":
"Bearer"}``; API calls then carry ``Authorization: Bearer <access_token>``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import quote

import requests
import tenacity
from airflow.providers.http.hooks.http import HttpHook

from mparticle_backfill.errors import BackfillError, CredentialsRefused, InvalidSettings

from .http_retry import Retryable, RetryAfterOr, retry_after

log = logging.getLogger("mparticle_backfill.data_planning")

DEFAULT_TOKEN_URL = "https://sso.auth.mparticle.com/oauth/token"
DEFAULT_API_URL = "https://api.mparticle.com"
AUDIENCE = "https://api.mparticle.com"
DEFAULT_TOKEN_LIFETIME_SECONDS = 28800  # what mParticle's docs show for expires_in
TOKEN_MARGIN_SECONDS = 300.0  # a token is renewed this long before it expires (a tenth of short lifetimes)

# Connection extras read by this hook; HttpHook would send any other extra key as an HTTP header.
CLIENT_EXTRAS = {
    "workspace_id": None,
    "token_url": DEFAULT_TOKEN_URL,
    "api_url": None,
    "timeout_seconds": 30.0,
    "max_retries": 5,
    "backoff_seconds": 0.5,
}


class DataPlanNotFound(InvalidSettings):
    """The workspace has no such plan or plan version (HTTP 404). Retrying cannot help."""

    def __init__(self, problem: str) -> None:
        super().__init__("data_plan", problem)


class DataPlanningCredentialsRefused(CredentialsRefused):
    """mParticle refused the client id and secret, or they lack access to the plans (401/403)."""


class DataPlanningUnavailable(BackfillError):
    """The Data Planning API or its token endpoint stayed unavailable (5xx, 429, timeouts) after every retry."""


@dataclass(frozen=True, slots=True)
class DataPlanningSettings:
    """How to reach the Data Planning API.

    :param workspace_id: the mParticle workspace holding the plans.
    :param client_id: the API credentials' client id.
    :param client_secret: their client secret (sent to the token endpoint only, never logged).
    :param api_url: the API root (default ``https://api.mparticle.com``).
    :param token_url: the OAuth token endpoint (default ``https://sso.auth.mparticle.com/oauth/token``).
    :param timeout_seconds: connect and read timeout of one request.
    :param max_retries: retries of one request on 429, 5xx, timeouts and dropped connections.
    :param backoff_seconds: first backoff between retries (doubled each time, with jitter, up to 30 s).
    """

    workspace_id: str
    client_id: str = field(repr=False)
    client_secret: str = field(repr=False)
    api_url: str = DEFAULT_API_URL
    token_url: str = DEFAULT_TOKEN_URL
    timeout_seconds: float = 30.0
    max_retries: int = 5
    backoff_seconds: float = 0.5
    max_backoff_seconds: float = 30.0

    def __post_init__(self) -> None:
        if not self.workspace_id:
            raise InvalidSettings(
                "workspace_id", "the connection's extra needs the mParticle workspace_id of the plans"
            )
        if not self.client_id or not self.client_secret:
            raise InvalidSettings(
                "login/password", "the connection needs the API credentials' client id (login) and secret (password)"
            )
        for name in ("api_url", "token_url"):
            if not getattr(self, name).startswith(("http://", "https://")):
                raise InvalidSettings(name, f"must be a URL, got {getattr(self, name)!r}")
        if self.max_retries < 0 or self.timeout_seconds <= 0 or self.backoff_seconds < 0:
            raise InvalidSettings("max_retries/timeout_seconds/backoff_seconds", "must be positive")


class DataPlanningClient:
    """Reads plans from the Data Planning API over a ``requests`` session.

    - The bearer token is fetched once and reused until shortly before its ``expires_in`` lifetime ends.
    - 401 from the API: the token is renewed once and the call repeated; a second 401, or a 403,
      raises :class:`DataPlanningCredentialsRefused`, as does a token endpoint refusing the credentials.
    - 404: :class:`DataPlanNotFound` naming the plan (and version) and the workspace.
    - 429 (waits ``Retry-After`` if given), 5xx, timeouts, dropped connections: retried with exponential
      backoff and jitter up to ``max_retries``, then :class:`DataPlanningUnavailable`.
    """

    def __init__(
        self,
        settings: DataPlanningSettings,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.token_requests = 0
        self._session = session or requests.Session()
        self._session.headers.update({"Accept": "application/json", "User-Agent": "mparticle-quarantine-backfill"})
        self._token: str | None = None
        self._token_renew_at = 0.0

    def close(self) -> None:
        self._session.close()

    @property
    def plans_url(self) -> str:
        workspace = quote(str(self.settings.workspace_id), safe="")
        return f"{self.settings.api_url.rstrip('/')}/platform/v2/workspaces/{workspace}/plans"

    def fetch_plan(self, plan_id: str, version: int | None = None) -> dict[str, Any]:
        """The plan document (all versions), or one version's document when ``version`` is given."""
        if not isinstance(plan_id, str) or not plan_id:
            raise InvalidSettings("data_plan", f"a plan id is needed, got {plan_id!r}")
        url = f"{self.plans_url}/{quote(plan_id, safe='')}"
        what = f"plan {plan_id!r}"
        if version is not None:
            if isinstance(version, bool) or not isinstance(version, int):
                raise InvalidSettings("data_plan", f"a plan version is an integer, got {version!r}")
            url += f"/versions/{version}"
            what = f"version {version} of plan {plan_id!r}"
        document = self._get(url, what)
        if not isinstance(document, dict):
            raise DataPlanningUnavailable(f"the Data Planning API answered {what} with something other than an object")
        log.info("Fetched %s from workspace %s", what, self.settings.workspace_id)
        return document

    def check_credentials(self) -> None:
        """Fetch a token: raises :class:`DataPlanningCredentialsRefused` if the credentials are refused."""
        self._bearer(renew=True)

    # -- token ----------------------------------------------------------------------------------------

    def _bearer(self, renew: bool = False) -> str:
        if renew or self._token is None or self.clock() >= self._token_renew_at:
            self._token = None
            token, lifetime = self._retrying(self._request_token, "a token from the token endpoint")
            self._token = token
            self._token_renew_at = self.clock() + lifetime - min(TOKEN_MARGIN_SECONDS, lifetime / 10)
        return self._token

    def _request_token(self) -> tuple[str, float]:
        settings = self.settings
        body = {
            "client_id": settings.client_id,
            "client_secret": settings.client_secret,
            "audience": AUDIENCE,
            "grant_type": "client_credentials",
        }
        self.token_requests += 1
        response = self._send("POST", settings.token_url, json=body)
        status = response.status_code
        if status in (400, 401, 403):
            raise DataPlanningCredentialsRefused(
                f"mParticle's token endpoint refused the client id {settings.client_id!r} and its secret "
                f"(HTTP {status}{self._oauth_error(response)}): check the connection's login (client id) and "
                "password (client secret), and that these API credentials are active and were issued for "
                "the Platform API (Settings > API Credentials)"
            )
        self._raise_if_retryable(response)
        if status != 200:
            raise DataPlanningUnavailable(f"the token endpoint {settings.token_url} answered HTTP {status}")
        try:
            answer = response.json()
            token = answer["access_token"]
            lifetime = float(answer.get("expires_in") or DEFAULT_TOKEN_LIFETIME_SECONDS)
        except (ValueError, KeyError, TypeError):
            raise DataPlanningUnavailable(
                f"the token endpoint {settings.token_url} answered without an access_token"
            ) from None
        if not isinstance(token, str) or not token:
            raise DataPlanningUnavailable(f"the token endpoint {settings.token_url} answered an empty access_token")
        return token, max(lifetime, 1.0)

    def _oauth_error(self, response: requests.Response) -> str:
        """The OAuth error code and description (never echoes the secret)."""
        try:
            answer = response.json()
        except ValueError:
            return ""
        if not isinstance(answer, dict) or not answer.get("error"):
            return ""
        text = f": {answer['error']}"
        if isinstance(answer.get("error_description"), str):
            text += f", {answer['error_description'][:200]}"
        return text.replace(self.settings.client_secret, "***")

    # -- API calls ------------------------------------------------------------------------------------

    def _get(self, url: str, what: str) -> Any:
        try:
            return self._retrying(self._attempt_get, what, url, what)
        except _Unauthorized:
            self._bearer(renew=True)  # the token was revoked or expired early: one new token, one more try
            try:
                return self._retrying(self._attempt_get, what, url, what)
            except _Unauthorized:
                raise self._refused(401, what) from None

    def _attempt_get(self, url: str, what: str) -> Any:
        response = self._send("GET", url, headers={"Authorization": f"Bearer {self._bearer()}"})
        status = response.status_code
        if status == 200:
            try:
                return response.json()
            except ValueError:
                raise DataPlanningUnavailable(f"the Data Planning API answered {what} with invalid JSON") from None
        if status == 401:
            raise _Unauthorized
        if status == 403:
            raise self._refused(403, what)
        if status == 404:
            raise DataPlanNotFound(
                f"no such {what} in workspace {self.settings.workspace_id} (HTTP 404 from {url}); check the "
                "plan id and version the replay names, and the connection's workspace_id"
            )
        self._raise_if_retryable(response)
        raise InvalidSettings(
            "data_plan", f"the Data Planning API answered HTTP {status} to GET {url}; no retry can fix this"
        )

    def _refused(self, status: int, what: str) -> DataPlanningCredentialsRefused:
        return DataPlanningCredentialsRefused(
            f"the Data Planning API refused access to {what} in workspace {self.settings.workspace_id} "
            f"(HTTP {status}) with a fresh token: the API credentials (client id "
            f"{self.settings.client_id!r}) need the Platform API with access to this workspace "
            "(Settings > API Credentials); check the connection's login, password and workspace_id"
        )

    # -- transport ------------------------------------------------------------------------------------

    def _send(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        timeout = self.settings.timeout_seconds
        try:
            return self._session.request(method, url, timeout=(timeout, timeout), **kwargs)
        except (requests.ConnectionError, requests.Timeout) as error:
            raise Retryable(f"{type(error).__name__} from {url}") from None

    @staticmethod
    def _raise_if_retryable(response: requests.Response) -> None:
        status = response.status_code
        if status == 429 or status >= 500:
            raise Retryable(f"HTTP {status}", retry_after(response.headers.get("Retry-After")))

    def _retrying(self, call: Callable[..., Any], what: str, *args: Any) -> Any:
        settings = self.settings
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(settings.max_retries + 1),
            wait=RetryAfterOr(settings.backoff_seconds, settings.max_backoff_seconds),
            retry=tenacity.retry_if_exception_type(Retryable),
            before_sleep=lambda state: log.warning(
                "Data Planning API: %s, retrying (attempt %d)", state.outcome.exception(), state.attempt_number
            ),
            reraise=True,
        )
        try:
            return retrying(call, *args)
        except Retryable as last:
            raise DataPlanningUnavailable(
                f"could not get {what} after {settings.max_retries + 1} attempts (last: {last})"
            ) from None


class _Unauthorized(Exception):
    """The API refused the bearer token (401): renew it once."""


class MParticleDataPlanningHook(HttpHook):
    """Reads data plans from mParticle's Data Planning API (to predict what a replay would have blocked again).

    Builds on :class:`HttpHook`'s connection handling (``proxies``, ``verify``, ``cert``, ``trust_env``
    from the extra); the client id and secret go only to the token endpoint, never to the API as Basic
    auth. Connection (type ``http``, default id ``mparticle_data_planning``):

    - **login**: the API credentials' client id; **password**: their client secret (Settings > API
      Credentials in mParticle, with access to the Platform API for the workspace);
    - **extra**: ``workspace_id`` (required); optional ``api_url`` (default ``https://api.mparticle.com``,
      or the connection's host), ``token_url`` (default ``https://sso.auth.mparticle.com/oauth/token``),
      ``timeout_seconds`` (30), ``max_retries`` (5), ``backoff_seconds`` (0.5), and HttpHook's own keys.

    :param mparticle_data_planning_conn_id: the connection id.
    """

    conn_name_attr = "mparticle_data_planning_conn_id"
    default_conn_name = "mparticle_data_planning"
    conn_type = "http"
    hook_name = "mParticle Data Planning API"

    def __init__(self, mparticle_data_planning_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(method="GET", http_conn_id=mparticle_data_planning_conn_id, **kwargs)
        self.mparticle_data_planning_conn_id = mparticle_data_planning_conn_id

    @cached_property
    def client_settings(self) -> DataPlanningSettings:
        connection = self.get_connection(self.mparticle_data_planning_conn_id)
        extra = {**CLIENT_EXTRAS, **{k: v for k, v in connection.extra_dejson.items() if k in CLIENT_EXTRAS}}
        api_url = extra["api_url"]
        if not api_url and connection.host:
            if "://" not in connection.host and not connection.schema:
                connection.schema = "https"
            self._set_base_url(connection)
            api_url = self.base_url
        try:
            return DataPlanningSettings(
                workspace_id=str(extra["workspace_id"] or ""),
                client_id=connection.login or "",
                client_secret=connection.password or "",
                api_url=api_url or DEFAULT_API_URL,
                token_url=str(extra["token_url"] or DEFAULT_TOKEN_URL),
                timeout_seconds=float(extra["timeout_seconds"]),
                max_retries=int(extra["max_retries"]),
                backoff_seconds=float(extra["backoff_seconds"]),
            )
        except (TypeError, ValueError) as error:
            raise InvalidSettings(self.mparticle_data_planning_conn_id, f"bad connection extra: {error}") from None

    def get_conn(
        self, headers: dict[Any, Any] | None = None, extra_options: dict[str, Any] | None = None
    ) -> DataPlanningClient:
        """A :class:`DataPlanningClient` over HttpHook's session (the connection's proxies and TLS)."""
        settings = self.client_settings  # validates the connection first, naming what is wrong
        session = super().get_conn(headers, extra_options)
        session.auth = None  # HttpHook set Basic auth from login/password: the secret must not reach the API
        for name in CLIENT_EXTRAS:
            session.headers.pop(name, None)
        return DataPlanningClient(settings, session)

    @cached_property
    def client(self) -> DataPlanningClient:
        """One client per hook, so that its token serves every fetch."""
        return self.get_conn()

    def fetch_plan(self, plan_id: str, version: int | None = None) -> dict[str, Any]:
        """The plan document (``data_plan_versions``), or one version's when ``version`` is given.

        Feed it to :func:`mparticle_backfill.plan_check.load_plan`.
        """
        return self.client.fetch_plan(plan_id, version)

    def test_connection(self) -> tuple[bool, str]:
        """Ask the token endpoint for a token: tells whether the client id and secret are accepted."""
        try:
            self.client.check_credentials()
        except (BackfillError, ValueError) as error:
            return False, str(error)
        workspace = self.client_settings.workspace_id
        return True, f"The token endpoint accepted the client id; plans are read from workspace {workspace}"
