"""One error hierarchy for the whole project.

Every error knows the HTTP status and the machine-readable code it maps to, so the API layer
turns any of them into ``{"error": ..., "code": ...}`` in one place and the CLI prints the message.
"""

from __future__ import annotations


class SlicerError(Exception):
    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_json(self) -> dict[str, str]:
        return {"error": self.message, "code": self.code}


class BadRequest(SlicerError):
    status = 400
    code = "bad_request"


class Unauthorized(SlicerError):
    status = 401
    code = "unauthorized"


class Forbidden(SlicerError):
    status = 403
    code = "forbidden"


class NotFound(SlicerError):
    status = 404
    code = "not_found"


class Timeout(SlicerError):
    status = 408
    code = "timeout"


class Conflict(SlicerError):
    status = 409
    code = "conflict"


class Gone(SlicerError):
    status = 410
    code = "gone"


class NotSupported(SlicerError):
    status = 501
    code = "not_supported"


class Unavailable(SlicerError):
    status = 503
    code = "unavailable"


class ConfigError(SlicerError):
    """A config file or CLI value is invalid; the message names the field."""

    status = 400
    code = "invalid_config"


class ImageError(SlicerError):
    """The guest image could not be built or is incomplete."""

    code = "image_error"


class HypervisorError(SlicerError):
    """QEMU could not be started or controlled."""

    code = "hypervisor_error"


class AgentError(Unavailable):
    """The in-guest agent is unreachable or broke the protocol."""

    code = "agent_unavailable"


class NetworkError(SlicerError):
    """A namespace, bridge or tap could not be set up."""

    code = "network_error"
