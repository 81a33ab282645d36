"""Dynamic batching with bounded admission, for the server's event loop.

FastAPI and uvicorn have no batching of their own; this is the small piece the server adds
(README "Deploy > Serve" says why not LitServe's): requests that arrive together run in one forward.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class QueueFull(Exception):
    """More requests than ``max_queue`` are in the server."""


class Batcher:
    """Admits at most ``max_queue`` requests and runs their samples in batches of up to ``max_batch``.

    The first sample of a batch waits at most ``max_wait_s`` for others; the forward runs in one
    background thread so the event loop keeps answering (and refusing) meanwhile.
    """

    def __init__(self, predict: Any, max_batch: int, max_wait_s: float, max_queue: int) -> None:
        self.predict, self.max_batch, self.max_wait_s, self.max_queue = predict, max_batch, max_wait_s, max_queue
        self.admitted = 0
        self.queue: asyncio.Queue = asyncio.Queue()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="forward")
        self.task: asyncio.Task | None = None
        self.batches = self.samples = 0

    def admit(self) -> None:
        """Count one request in, or raise ``QueueFull``; ``release`` counts it out."""
        if self.admitted >= self.max_queue:
            raise QueueFull
        self.admitted += 1

    def release(self) -> None:
        self.admitted -= 1

    async def submit(self, sample: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """The sample's prediction and the size of the batch it ran in."""
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self.run())
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((sample, future))
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except TimeoutError:
                    break
            batch = [(s, f) for s, f in batch if not f.done()]  # a request that timed out is skipped
            if not batch:
                continue
            try:
                preds = await loop.run_in_executor(self.executor, self.predict, [s for s, _ in batch])
            except Exception as err:  # the batch fails together; the server goes on
                for _, f in batch:
                    if not f.done():
                        f.set_exception(err)
                continue
            self.batches, self.samples = self.batches + 1, self.samples + len(batch)
            for (_, f), pred in zip(batch, preds, strict=True):
                if not f.done():
                    f.set_result((pred, len(batch)))
