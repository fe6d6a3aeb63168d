"""The body limit: bodiless HTTP/1 requests pass untouched, other bodies are counted."""

from __future__ import annotations

from starlette.types import Message, Receive, Scope, Send

from cqrskit.http.limits import BodySizeLimit


async def reading_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Read the whole body, then answer 200 with its length."""
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(size).encode()})


async def call(app: BodySizeLimit, http_version: str, chunks: list[bytes]) -> list[Message]:
    scope: Scope = {
        "type": "http",
        "http_version": http_version,
        "method": "POST",
        "path": "/",
        "headers": [],  # no Content-Length, no Transfer-Encoding
    }
    pending = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return pending.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


async def test_a_bodiless_http1_request_reaches_the_app_with_the_servers_send() -> None:
    seen: list[Send] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(send)
        await reading_app(scope, receive, send)

    sent = await call(BodySizeLimit(app, max_bytes=10), "1.1", [b""])
    assert [m.get("status") for m in sent][:1] == [200]
    assert seen[0].__name__ == "send"  # not wrapped: nothing to count or time


async def test_a_body_without_a_length_over_http2_is_still_counted() -> None:
    sent = await call(BodySizeLimit(reading_app, max_bytes=10), "2", [b"x" * 8, b"x" * 8])
    assert sent[0]["status"] == 413
