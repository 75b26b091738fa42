"""Errors raised by the client, all within the project's ``SlicerError`` hierarchy."""

from __future__ import annotations

from pyslicer.errors import SlicerError, Timeout, Unavailable


class SlicerAPIError(SlicerError):
    """The daemon answered with a non-2xx status.

    ``message`` is the server's ``error`` text (or the body, when it is not JSON), ``code`` its machine
    code (or one derived from the status) and ``status`` the HTTP status.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str | None = None,
        method: str | None = None,
        url: str | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.status = status
        self.method = method
        self.url = url

    def __repr__(self) -> str:
        return f"SlicerAPIError(status={self.status}, code={self.code!r}, message={self.message!r})"


class SlicerConnectionError(Unavailable):
    """The daemon could not be reached, or the connection broke mid-request."""

    code = "connection_failed"


class SlicerResponseError(SlicerError):
    """The daemon answered 2xx with a body the client cannot understand."""

    code = "invalid_response"


class SlicerTimeoutError(Timeout):
    """A client-side wait (``wait_ready``) ran out of time."""

    code = "timeout"


class SlicerUpstreamError(Unavailable):
    """A forward's target inside the guest refused the connection or could not be reached (the message, the
    daemon's close reason, says why: ``127.0.0.1:9: Connection refused``)."""

    code = "upstream_unreachable"
