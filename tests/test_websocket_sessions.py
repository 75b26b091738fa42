import asyncio
from typing import cast

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from pyslicer.api.websocket_sessions import close, reason_text


class GoneClient:
    """A WebSocket whose client dropped the TCP connection: the server's close frame cannot be sent."""

    application_state = WebSocketState.CONNECTED

    def __init__(self) -> None:
        self.closes = 0

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.closes += 1
        raise WebSocketDisconnect(code=1006)


def test_close_after_the_client_vanished_is_quiet() -> None:
    client = GoneClient()
    asyncio.run(close(cast(WebSocket, client), 1011, "upstream refused"))
    assert client.closes == 1


def test_reason_is_cut_on_a_character_boundary() -> None:
    text = "é" * 100
    cut = reason_text(text)
    assert len(cut.encode()) <= 123
    assert cut.endswith("...")
