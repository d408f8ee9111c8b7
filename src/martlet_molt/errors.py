"""The one exception tree. Domain code raises these; the HTTP layer maps them once.

MartletError                      500
├── Unauthorized                  401  (no or wrong API key; answered with WWW-Authenticate)
├── NotFound                      404
│   ├── SessionNotFound
│   ├── RunNotFound
│   └── ModelNotFound             (a `model` the gateway does not serve)
├── Conflict                      409
│   ├── SessionBusy               (carries the active run's id)
│   └── LeaseLost                 (a fenced write by an owner that lost its run; never HTTP)
├── InvalidRequest                422
├── BodyTooLarge                  413  (the request body passed MARTLET_MAX_BODY_BYTES)
├── TooManyRuns                   429
├── ProviderNotConfigured         503
├── ServiceUnavailable            503
│   ├── BrokerUnavailable         (Redis cannot be reached: new runs wait for it)
│   └── StoreUnavailable          (the database cannot be reached)
├── ProviderError                 502  (the upstream failed; `kind` names why, for metrics)
│   ├── UpstreamTimeout           (silent past the idle timeout, or connecting timed out)
│   ├── UpstreamUnreachable       (refused, or the connection dropped mid-stream)
│   ├── UpstreamHttpError         (an error status, in `status`, after the SDK's retries)
│   └── UpstreamMalformed         (a chunk that is not a JSON completion chunk)
├── ReplyTooLong                  (ends a run; never reaches HTTP)
├── SchemaTooNew                  (a newer release migrated the database; stops start-up)
├── SettingsRefused               (the settings cannot serve, e.g. Redis with SQLite; at start)
├── LogTrimmed                    (the shared log no longer holds a reader's cursor; the caller
│                                  answers from the store instead; never reaches HTTP)
└── InvalidTransition             500  (a bug: a run state changed illegally)
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, TypeAlias

UpstreamErrorKind: TypeAlias = Literal[
    "rate_limited", "http_5xx", "http_4xx", "timeout", "connection", "malformed", "other"
]
"""Why the upstream failed, as `martlet_upstream_errors_total` counts it."""


class MartletError(Exception):
    """Base of every error the gateway raises on purpose."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    headers: ClassVar[dict[str, str]] = {}
    """HTTP headers the answer carries."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class Unauthorized(MartletError):
    """API keys are on and the request carries no key, or a wrong one."""

    status_code = 401
    code = "unauthorized"
    headers: ClassVar[dict[str, str]] = {"WWW-Authenticate": "Bearer"}


class NotFound(MartletError):
    """A thing the client named does not exist (or is not theirs to see)."""

    status_code = 404
    code = "not_found"


class SessionNotFound(NotFound):
    """No such session."""

    code = "session_not_found"


class RunNotFound(NotFound):
    """No such run."""

    code = "run_not_found"


class ModelNotFound(NotFound):
    """A request named a model the gateway does not serve (`GET /v1/models` lists them)."""

    code = "model_not_found"


class Conflict(MartletError):
    """The request clashes with the current state."""

    status_code = 409
    code = "conflict"


class SessionBusy(Conflict):
    """A session already has an active run: one generation at a time per session."""

    code = "session_busy"

    def __init__(self, session_id: str, active_run_id: str) -> None:
        super().__init__(
            f"session {session_id} already has an active run {active_run_id}",
            session_id=session_id,
            active_run_id=active_run_id,
        )
        self.active_run_id = active_run_id


class LeaseLost(Conflict):
    """An instance wrote to a run it no longer owns: its lease expired and another instance
    took the run over (its fencing token is stale). The write changed nothing."""

    code = "lease_lost"

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id} is no longer owned by this instance", run_id=run_id)
        self.run_id = run_id


class InvalidRequest(MartletError):
    """The request is well-formed HTTP but asks for something invalid."""

    status_code = 422
    code = "invalid_request"


class BodyTooLarge(MartletError):
    """The request body is larger than `MARTLET_MAX_BODY_BYTES`; it is not read any further."""

    status_code = 413
    code = "body_too_large"
    headers: ClassVar[dict[str, str]] = {"Connection": "close"}


class TooManyRuns(MartletError):
    """The gateway holds as many active runs as it is allowed to."""

    status_code = 429
    code = "too_many_runs"


class ProviderNotConfigured(MartletError):
    """No upstream model is configured, so chat cannot answer."""

    status_code = 503
    code = "provider_not_configured"


class ServiceUnavailable(MartletError):
    """The gateway cannot take the request now (for example, it is shutting down)."""

    status_code = 503
    code = "unavailable"


class BrokerUnavailable(ServiceUnavailable):
    """The shared stream log (Redis) cannot be reached, so a run started now could not be read
    from other instances."""

    code = "broker_unavailable"


class StoreUnavailable(ServiceUnavailable):
    """The database cannot be reached, so nothing new can be saved."""

    code = "store_unavailable"


class ProviderError(MartletError):
    """The upstream model failed; the message says how. Raised as is when no subclass names
    the cause (for example, an error object inside the stream)."""

    status_code = 502
    code = "provider_error"
    kind: UpstreamErrorKind = "other"
    """The cause, so that nothing has to read it from the message's wording."""


class UpstreamTimeout(ProviderError):
    """The upstream went silent for longer than the idle timeout, or connecting timed out."""

    kind = "timeout"


class UpstreamUnreachable(ProviderError):
    """The upstream could not be reached, or its connection broke mid-stream."""

    kind = "connection"


class UpstreamHttpError(ProviderError):
    """The upstream answered with an error status (after any retries the SDK made)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"upstream returned HTTP {status}: {detail}")
        self.status = status
        if status == 429:
            self.kind = "rate_limited"
        elif status >= 500:
            self.kind = "http_5xx"
        elif status >= 400:
            self.kind = "http_4xx"


class UpstreamMalformed(ProviderError):
    """The upstream sent a chunk that is not JSON, or not shaped like a completion chunk."""

    kind = "malformed"

    def __init__(self, detail: str) -> None:
        super().__init__(f"upstream sent a malformed chunk: {detail}")


class ReplyTooLong(MartletError):
    """A reply passed `MARTLET_MAX_REPLY_CHARS`; the run ends keeping what it has."""

    status_code = 500
    code = "reply_too_long"


class SchemaTooNew(MartletError):
    """The database was migrated by a newer release than this one: its schema may hold what
    this code would break, so the store does not open."""

    code = "schema_too_new"

    def __init__(self, database_revision: str, code_revision: str) -> None:
        super().__init__(
            f"the database schema is at revision {database_revision}, newer than this code's "
            f"{code_revision}; upgrade martlet-molt",
            database_revision=database_revision,
            code_revision=code_revision,
        )


class SettingsRefused(MartletError):
    """The settings cannot serve as configured (Redis with a SQLite store): the app refuses to
    start rather than serve runs other instances could not see."""

    code = "settings_refused"


class LogTrimmed(MartletError):
    """A reader asked a shared stream log for events it no longer holds (it keeps only the
    newest entries of a long run): the caller reads the run from the store instead, rather
    than a reader silently skipping events."""

    code = "log_trimmed"

    def __init__(self, run_id: str, *, after: int, first_held: int) -> None:
        super().__init__(
            f"run {run_id}: events after {after} are no longer held (oldest held: {first_held})",
            run_id=run_id,
            after=after,
            first_held=first_held,
        )
        self.run_id = run_id
        self.after = after
        self.first_held = first_held


class InvalidTransition(MartletError):
    """A run's status was asked to change in a way its life cycle forbids."""

    code = "invalid_transition"
