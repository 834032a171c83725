"""Send many requests at once from an asyncio client (the server runs in its own thread and event loop)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx


async def _post_all(url: str, path: str, bodies: list[dict[str, Any]], concurrency: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def post(body: dict[str, Any]) -> httpx.Response:
            async with gate:
                return await client.post(path, json=body)

        return list(await asyncio.gather(*(post(body) for body in bodies)))


def post_concurrently(
    url: str, path: str, bodies: list[dict[str, Any]], concurrency: int | None = None
) -> list[httpx.Response]:
    """POST every body to url+path with at most `concurrency` (default: all) requests in flight."""
    return asyncio.run(_post_all(url, path, bodies, concurrency or len(bodies)))
