#!/usr/bin/env python3
"""Black-box interop checks with aio-pika (asyncio, robust connections) against a running broker.

Usage: AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f python aio_pika_test.py
Prints 'PASS name' or 'FAIL name: reason' per check, then 'N passed, M failed'; exits 1 on any failure.
Every check runs under its own timeout.
"""
import asyncio
import os
import sys
import uuid

import aio_pika

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
RUN = uuid.uuid4().hex[:8]
CHECK_TIMEOUT = 20
CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


def name(prefix):
    return f"warren-it.aio-pika.{RUN}.{prefix}.{uuid.uuid4().hex[:6]}"


def expect(cond, msg):
    if not cond:
        raise AssertionError(msg)


@check
async def robust_consumer_recovers_on_the_same_connection():
    """The queue of a robust consumer is deleted by someone else: the broker cancels the consumer
    (basic.cancel), aio-pika declares the queue again and consumes with the same consumer tag on
    the same channel. That must work without losing the connection (a broker that kept the
    cancelled tag taken closed it with 530, and aio-pika had to reconnect)."""
    conn = await aio_pika.connect_robust(URL)
    other = await aio_pika.connect(URL)
    try:
        reconnects = []
        conn.reconnect_callbacks.add(lambda *_: reconnects.append(1))
        ch = await conn.channel()
        q = await ch.declare_queue(name("robust"), auto_delete=False)
        got = asyncio.Queue()

        async def on_message(m):
            async with m.process():
                await got.put(m.body)

        tag = await q.consume(on_message, consumer_tag="warren-robust-tag")
        och = await other.channel()
        await och.default_exchange.publish(aio_pika.Message(b"before"), routing_key=q.name)
        expect(await asyncio.wait_for(got.get(), 5) == b"before", "first message")
        await och.queue_delete(q.name)
        # Recovered when a message published to the (re-declared) queue arrives.
        for _ in range(50):
            await asyncio.sleep(0.1)
            try:
                await och.declare_queue(q.name, passive=True)
            except aio_pika.exceptions.ChannelNotFoundEntity:
                och = await other.channel()
                continue
            break
        await och.default_exchange.publish(aio_pika.Message(b"after"), routing_key=q.name)
        expect(await asyncio.wait_for(got.get(), 10) == b"after", "message after recovery")
        expect(not reconnects, f"the connection was lost and reconnected {len(reconnects)} time(s)")
        expect(tag == "warren-robust-tag", f"consumer tag {tag!r}")
        await och.queue_delete(q.name)
    finally:
        await other.close()
        await conn.close()


async def main():
    passed = failed = 0
    for fn in CHECKS:
        try:
            await asyncio.wait_for(fn(), CHECK_TIMEOUT)
            print(f"PASS {fn.__name__}", flush=True)
            passed += 1
        except Exception as e:  # noqa: BLE001 - report every kind of failure
            print(f"FAIL {fn.__name__}: {type(e).__name__}: {e}", flush=True)
            failed += 1
    print(f"{passed} passed, {failed} failed")
    return failed == 0


if __name__ == "__main__":
    sys.exit(0 if asyncio.run(main()) else 1)
