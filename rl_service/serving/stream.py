"""Incremental streaming: engine tokens become server-sent events as they are produced.

    route ──▶ open_stream(): a DeltaFeed whose thread holds the engine slot for the whole
                │         generation (one policy version per response; a swap waits for it)
                │  engine.stream() deltas, handed to the event loop as they come
                │  (the engine never waits for the client: a slow reader holds no lock)
                ▼
              sse_events(): per choice, decode the ids so far; StreamText holds back a
              partial character or a possible stop-string prefix; one chunk per new piece,
              a finish chunk per choice, the completion stored, a usage chunk if asked,
              then `data: [DONE]`.

Closing the response early (client gone) sets the feed's cancel flag: the thread stops
pulling deltas, which aborts the engine requests and releases the lock.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

from rl_service.serving import protocol as P

if TYPE_CHECKING:
    from rl_service.serving.admission import EngineSlot, Ticket

Put = Callable[[tuple[str, Any]], None]
log = logging.getLogger(__name__)


class DeltaFeed:
    """Runs `produce(put, cancel)` on `pool`; `get()` returns its items on the event loop, in order:
    ("version", v), ("delta", TokenDelta)..., then ("end", None) or ("error", exception)."""

    def __init__(self, pool: Executor, produce: Callable[[Put, threading.Event], None]):
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()  # unbounded: at most n * max_tokens deltas
        self.cancel = threading.Event()
        self.done = self.loop.run_in_executor(pool, self._main, produce)

    def _put(self, item: tuple[str, Any]) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def _main(self, produce: Callable[[Put, threading.Event], None]) -> None:
        try:
            produce(self._put, self.cancel)
            self._put(("end", None))
        except BaseException as err:  # noqa: BLE001 - reported to the response, not lost in a thread
            self._put(("error", err))

    async def get(self) -> tuple[str, Any]:
        return await self.queue.get()


async def open_stream(engine, slot: EngineSlot, ticket: Ticket, prompts: list[str] | list[list[int]], sampling: dict):
    """Start `engine.stream(prompts, **sampling)` (prompts: texts or token ids) in a pool thread
    holding the engine slot, and return once it holds the engine: (feed of its deltas, the
    policy version producing them). The stream owns `ticket` from here: it is released when the
    generation ends, sent or not. 500 envelope when the engine fails before its first delta."""

    def produce(put: Put, cancel: threading.Event) -> None:
        try:

            def run() -> None:
                put(("version", engine.version))
                deltas = engine.stream(prompts, **sampling)
                try:
                    for delta in deltas:
                        slot.stream_tokens += len(delta.token_ids)
                        put(("delta", delta))
                        if cancel.is_set():
                            slot.cancelled += 1  # under the engine lock
                            break
                finally:
                    deltas.close()  # aborts what the engine still runs

            slot.run(run)
        finally:
            ticket.release()  # admission ends with the generation, sent or not

    feed = DeltaFeed(slot.pool, produce)
    ticket.handed_over = True
    try:
        what, item = await feed.get()
    except BaseException:
        feed.cancel.set()  # the client left while waiting for the engine
        raise
    if what == "error":
        log.error("generation failed before its first token", exc_info=item)  # details: the log only
        raise P.APIError(500, P.GENERATION_FAILED, "server_error", code="internal_error")
    return feed, item


async def sse_events(
    feed: DeltaFeed,
    decode: Callable[[list[int]], str],
    chat: bool,
    rid: str,
    model: str,
    num_choices: int,
    stop: str | list[str] | None,
    record: Callable[[list[tuple[str, str]]], Awaitable[None]],
    prompt_tokens: int | None = None,
) -> AsyncIterator[str]:
    """SSE chunks of `num_choices` choices, interleaved as their tokens arrive. `record` stores the
    final (text, finish_reason) of every choice before `[DONE]` is sent. With `prompt_tokens`
    (stream_options.include_usage) a usage chunk precedes `[DONE]`: the completion tokens are
    those the engine produced for each choice up to its end."""
    ids: list[list[int]] = [[] for _ in range(num_choices)]
    texts = [P.StreamText(stop) for _ in range(num_choices)]
    finish: list[str | None] = [None] * num_choices
    try:
        if chat:
            for i in range(num_choices):
                yield P.stream_chunk(True, rid, model, i, None, None, first=True)
        while True:
            kind, item = await feed.get()
            if kind == "end":
                break
            if kind == "error":
                log.error("generation failed mid-stream", exc_info=item)
                body = P.envelope(P.GENERATION_FAILED, "server_error", code="internal_error")
                yield f"data: {json.dumps(body)}\n\n"
                return
            i = item.index
            if finish[i] is not None:
                continue  # ended by a stop string; the engine may still be producing it
            ids[i].extend(item.token_ids)
            piece = texts[i].update(decode(ids[i]), final=item.finish_reason is not None)
            if piece:
                yield P.stream_chunk(chat, rid, model, i, piece, None)
            if texts[i].stopped or item.finish_reason is not None:
                finish[i] = "stop" if texts[i].stopped else item.finish_reason
                yield P.stream_chunk(chat, rid, model, i, None, finish[i])
                if all(f is not None for f in finish):
                    feed.cancel.set()  # nothing left to send: stop the engine now
        for i, f in enumerate(finish):
            if f is None:  # the engine ended without a finish reason (cancelled): close the choice
                finish[i] = "length"
                yield P.stream_chunk(chat, rid, model, i, None, "length")
        await record([(t.sent, f) for t, f in zip(texts, finish)])
        if prompt_tokens is not None:
            yield P.usage_chunk(chat, rid, model, P.usage(prompt_tokens, sum(len(x) for x in ids)))
        yield P.STREAM_DONE
    finally:
        feed.cancel.set()
