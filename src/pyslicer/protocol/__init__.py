"""What the host and the in-guest agent share: the channel framing (see docs/protocol.md).

Stdlib only: the agent imports this inside the guest.
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
    decode_json,
    encode,
    encode_json,
    window_increment,
    window_payload,
)

__all__ = [
    "HEADER",
    "INITIAL_WINDOW",
    "MAX_PAYLOAD",
    "PROTOCOL_VERSION",
    "Channel",
    "Frame",
    "FrameDecoder",
    "FrameType",
    "ProtocolError",
    "decode_json",
    "encode",
    "encode_json",
    "window_increment",
    "window_payload",
]
