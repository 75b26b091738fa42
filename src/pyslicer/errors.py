"""One error hierarchy for the whole project: what went wrong, in the daemon's own terms.

::

    SlicerError                   code: a stable machine-readable name; message: for people
     +-- InvalidArgument          a request or value is malformed or out of range (names the field)
     |    +-- ConfigError         a config file or CLI value is invalid
     +-- Unauthenticated          no valid credentials (API only)
     +-- PermissionDenied         the caller may not do that (a protected node)
     +-- NotFound                 no such host group, VM or path
     +-- Conflict                 the target is in a state that does not allow it
     +-- Timeout                  a wait ran out of time (what it made is cleaned up)
     +-- Gone                     it existed and was removed
     +-- NotSupported             this build cannot do that
     +-- Unavailable              a resource is busy or exhausted, or a peer is unreachable
     |    +-- AgentError          the in-guest agent is unreachable or broke the protocol
     |    +-- UpstreamUnreachable a forward's target in the guest refused or failed the connection
     +-- InsufficientStorage      the guest's disk (or, for a commit or fork, the data dir's) cannot hold it
     +-- StorageError             the data dir's files could not be written (nothing was left half-made)
     +-- ImageError               the guest image could not be built or is incomplete
     +-- HypervisorError          QEMU could not be started or controlled
     |    +-- SnapshotError       a VM's saved state could not be saved, or is missing or cannot be loaded
     +-- NetworkError             a namespace, bridge or tap could not be set up

No HTTP here: ``pyslicer.api.errors`` maps each class to its status in one table, and the CLI prints
``message``.
"""

from __future__ import annotations


class SlicerError(Exception):
    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_json(self) -> dict[str, str]:
        return {"error": self.message, "code": self.code}


class InvalidArgument(SlicerError):
    code = "invalid_argument"


class ConfigError(InvalidArgument):
    """A config file or CLI value is invalid; the message names the field."""

    code = "invalid_config"


class Unauthenticated(SlicerError):
    code = "unauthorized"


class PermissionDenied(SlicerError):
    code = "forbidden"


class NotFound(SlicerError):
    code = "not_found"


class Conflict(SlicerError):
    code = "conflict"


class Timeout(SlicerError):
    code = "timeout"


class Gone(SlicerError):
    code = "gone"


class NotSupported(SlicerError):
    code = "not_supported"


class Unavailable(SlicerError):
    code = "unavailable"


class AgentError(Unavailable):
    """The in-guest agent is unreachable or broke the protocol."""

    code = "agent_unavailable"


class UpstreamUnreachable(Unavailable):
    """A forward's target inside the guest refused the connection, or could not be reached."""

    code = "upstream_unreachable"


class InsufficientStorage(SlicerError):
    """The guest's disk (or, for a commit or a fork, the data dir's) cannot hold it; nothing was written."""

    code = "no_space"


class StorageError(SlicerError):
    """The data dir's files could not be written or read; nothing was left half-made."""

    code = "storage_error"


class ImageError(SlicerError):
    """The guest image could not be built or is incomplete."""

    code = "image_error"


class HypervisorError(SlicerError):
    """QEMU could not be started or controlled."""

    code = "hypervisor_error"


class NetworkError(SlicerError):
    """A namespace, bridge or tap could not be set up."""

    code = "network_error"


class SnapshotError(HypervisorError):
    """A VM's saved state could not be saved, or is missing or cannot be loaded."""

    code = "snapshot_error"
