"""A FastAPI service on melange.aio: an endpoint publishes, a consumer runs in the lifespan.

    pip install 'melange[pydantic]' fastapi uvicorn
    uvicorn examples.fastapi_app:app          # the broker of MELANGE_BACKEND_URL, else SQLite
    curl -X POST localhost:8000/orders -H 'content-type: application/json' \
         -d '{"order_id": "o-1", "amount": 42}'
    curl localhost:8000/receipts              # ["o-1"] once the consumer has run

Neither the endpoint nor the consumer blocks the event loop: the publish
and the consume loop's broker calls run on melange's threads, the
``async def`` listener on the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from melange import Consumer, listener
from melange.aio import AsyncMessageDispatcher, AsyncMessagePublisher, from_url
from melange.backends import default_backend_url
from melange.models import CORRELATION_ID

QUEUE = "fastapi-receipts"


class OrderPlaced(BaseModel):
    order_id: str
    amount: int


class Receipts(Consumer):
    """Sends (here: records) a receipt for every order placed."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[str] = []

    @listener
    async def on_order_placed(self, event: OrderPlaced) -> None:
        await asyncio.sleep(0)  # an await, as a real receipt mailer would have
        self.sent.append(event.order_id)


def create_app(backend_url: str | None = None) -> FastAPI:
    """Build the app; it connects to ``backend_url`` (default: ``MELANGE_BACKEND_URL``)."""
    receipts = Receipts()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        backend = from_url(backend_url or default_backend_url())
        dispatcher = AsyncMessageDispatcher(backend, [receipts], max_concurrency=20)
        await dispatcher.declare(QUEUE)
        app.state.publisher = AsyncMessagePublisher(backend)
        stop = asyncio.Event()
        consuming = asyncio.create_task(dispatcher.consume_loop(QUEUE, stop_event=stop))
        try:
            yield
        finally:
            stop.set()  # in-flight receipts finish; the rest stay queued
            await consuming
            await backend.close_connection()

    app = FastAPI(title="orders", lifespan=lifespan)

    @app.post("/orders", status_code=202)
    async def place_order(order: OrderPlaced) -> dict[str, Any]:
        message = await app.state.publisher.publish(order)  # to its type's topic
        correlation = message.metadata[CORRELATION_ID]
        return {"message_id": message.message_id, "correlation_id": correlation}

    @app.get("/receipts")
    async def list_receipts() -> list[str]:
        return receipts.sent

    return app


app = create_app()
