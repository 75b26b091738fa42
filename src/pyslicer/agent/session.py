"""What every stream-serving handler in the agent looks like (for type checking only).

A session is made for one OPEN with ``(loop, stream, request, send, on_finish)``: ``request`` is the
untrusted JSON request, ``send`` queues encoded frames for the host, ``on_finish(session)`` is called once
the session has sent its last message (it sends the CLOSE), never after ``cancel``. Then ``start`` is
called. Frames for the stream arrive through ``on_data`` (channel, bytes), ``on_eof`` (channel) and
``on_window`` (credit for bytes the session may send); a session that takes MESSAGEs from the host (a
shell's resize) has ``on_message`` (the untrusted JSON body), any other gets a protocol error. ``cancel``:
the host is gone or gave up; stop,
clean up, send nothing more. A session answered by one message sends it and calls ``on_finish`` from
``start``.
"""

from __future__ import annotations

from pyslicer.protocol import FrameType, encode, encode_json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any, Protocol

    from pyslicer.agent.loop import Loop

    class Session(Protocol):
        stream: int

        def start(self) -> None: ...
        def on_data(self, channel: int, data: bytes) -> None: ...
        def on_eof(self, channel: int) -> None: ...
        def on_window(self, increment: int) -> None: ...
        def cancel(self) -> None: ...

    # Queues encoded frames for the host. What the port does not take at once is copied, so the caller may reuse
    # its buffer as soon as this returns.
    Send = Callable[[bytes | memoryview], None]
    SessionFactory = Callable[[Loop, int, dict[str, Any], Send, Callable[[Session], None]], Session]


class StreamSession:
    """What every session keeps and how it sends: frames for its stream, and nothing once cancelled."""

    def __init__(
        self,
        loop: Loop,
        stream: int,
        request: dict[str, Any],
        send: Send,
        on_finish: Callable[[Any], None],
    ) -> None:
        self._loop = loop
        self.stream = stream
        self._request = request
        self._send_frame = send
        self._on_finish = on_finish
        self._cancelled = False
        self._done = False

    def _send(self, frame_type: int, payload: bytes = b"", flags: int = 0) -> None:
        if not self._cancelled:
            self._send_frame(encode(frame_type, self.stream, payload, flags))

    def _send_event(self, body: Mapping[str, Any]) -> None:
        if not self._cancelled:
            self._send_frame(encode_json(FrameType.MESSAGE, self.stream, body))
