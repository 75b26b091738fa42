"""What the host and the in-guest agent share: the channel framing and the agent's vocabulary.

See docs/protocol.md. Both ends import this package, the agent inside a TCG guest, so it imports only
``struct`` and the C half of ``json`` at run time: frame types and channels are ints, and the message
shapes (``ExecRequest``, ``ExecExit``, ...) are TypedDicts for type checking only; import those under
``TYPE_CHECKING``.
"""

from pyslicer.protocol.frames import (
    HEADER,
    INITIAL_WINDOW,
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    Channel,
    Frame,
    FrameDecoder,
    FrameType,
    ProtocolError,
    adjust_delta,
    adjust_payload,
    clock_payload,
    clock_time,
    decode_json,
    encode,
    encode_json,
    window_increment,
    window_payload,
)
from pyslicer.protocol.messages import WATCH_KINDS as WATCH_KINDS
from pyslicer.protocol.messages import Event, Op

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pyslicer.protocol.messages import BgError as BgError
    from pyslicer.protocol.messages import BgIdRequest as BgIdRequest
    from pyslicer.protocol.messages import BgInfo as BgInfo
    from pyslicer.protocol.messages import BgKillRequest as BgKillRequest
    from pyslicer.protocol.messages import BgLogRecord as BgLogRecord
    from pyslicer.protocol.messages import BgLogsRequest as BgLogsRequest
    from pyslicer.protocol.messages import BgStarted as BgStarted
    from pyslicer.protocol.messages import BgStartRequest as BgStartRequest
    from pyslicer.protocol.messages import BgWaitRequest as BgWaitRequest
    from pyslicer.protocol.messages import ExecError as ExecError
    from pyslicer.protocol.messages import ExecEvent as ExecEvent
    from pyslicer.protocol.messages import ExecExit as ExecExit
    from pyslicer.protocol.messages import ExecRequest as ExecRequest
    from pyslicer.protocol.messages import ExecStarted as ExecStarted
    from pyslicer.protocol.messages import ForwardRequest as ForwardRequest
    from pyslicer.protocol.messages import FsDone as FsDone
    from pyslicer.protocol.messages import FsEntry as FsEntry
    from pyslicer.protocol.messages import FsError as FsError
    from pyslicer.protocol.messages import FsMkdirRequest as FsMkdirRequest
    from pyslicer.protocol.messages import FsPathRequest as FsPathRequest
    from pyslicer.protocol.messages import FsWatchEnded as FsWatchEnded
    from pyslicer.protocol.messages import FsWatchEvent as FsWatchEvent
    from pyslicer.protocol.messages import FsWatchRequest as FsWatchRequest
    from pyslicer.protocol.messages import FsWatchStarted as FsWatchStarted
    from pyslicer.protocol.messages import HealthAnswer as HealthAnswer
    from pyslicer.protocol.messages import HealthRequest as HealthRequest
    from pyslicer.protocol.messages import Hello as Hello
    from pyslicer.protocol.messages import IdentityDone as IdentityDone
    from pyslicer.protocol.messages import IdentityRequest as IdentityRequest
    from pyslicer.protocol.messages import Ready as Ready
    from pyslicer.protocol.messages import Request as Request
    from pyslicer.protocol.messages import RequestError as RequestError
    from pyslicer.protocol.messages import SecretFile as SecretFile
    from pyslicer.protocol.messages import SecretsAnswer as SecretsAnswer
    from pyslicer.protocol.messages import SecretsDone as SecretsDone
    from pyslicer.protocol.messages import SecretsRequest as SecretsRequest
    from pyslicer.protocol.messages import ShellRequest as ShellRequest
    from pyslicer.protocol.messages import StatsRequest as StatsRequest
    from pyslicer.protocol.messages import StatsSnapshot as StatsSnapshot
    from pyslicer.protocol.messages import UserdataAnswer as UserdataAnswer
    from pyslicer.protocol.messages import UserdataRequest as UserdataRequest

__all__ = [
    "HEADER",
    "INITIAL_WINDOW",
    "MAX_PAYLOAD",
    "PROTOCOL_VERSION",
    "Channel",
    "Event",
    "Frame",
    "FrameDecoder",
    "FrameType",
    "Op",
    "ProtocolError",
    "adjust_delta",
    "adjust_payload",
    "clock_payload",
    "clock_time",
    "decode_json",
    "encode",
    "encode_json",
    "window_increment",
    "window_payload",
]
