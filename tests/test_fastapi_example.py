"""examples/fastapi_app.py driven over ASGI with httpx, its lifespan running around the requests."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the FastAPI example needs fastapi (in the dev extra)")

import httpx

from examples.fastapi_app import create_app


def test_an_order_posted_is_published_and_consumed_in_the_apps_lifespan(tmp_path: Path) -> None:
    app = create_app(f"sqlite:///{tmp_path / 'broker.db'}")

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://orders") as client,
        ):
            placed = [
                await client.post("/orders", json={"order_id": f"o-{n}", "amount": 10 * n})
                for n in range(3)
            ]
            assert [r.status_code for r in placed] == [202, 202, 202]
            bodies = [r.json() for r in placed]
            assert len({b["message_id"] for b in bodies}) == 3
            assert all(b["correlation_id"] == b["message_id"] for b in bodies)
            deadline = time.monotonic() + 20
            while len((await client.get("/receipts")).json()) < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert sorted((await client.get("/receipts")).json()) == ["o-0", "o-1", "o-2"]
            refused = await client.post("/orders", json={"order_id": "o-x"})
            assert refused.status_code == 422  # FastAPI validates the body first

    asyncio.run(scenario())
