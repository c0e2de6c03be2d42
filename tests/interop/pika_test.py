#!/usr/bin/env python3
"""Black-box interop checks with pika (BlockingConnection) against a running broker.

Usage: AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f python pika_test.py
Prints 'PASS name' or 'FAIL name: reason' per check, then 'N passed, M failed'; exits 1 on any failure.
With AMQPS_URL (amqps://..., guest) and TLS_CA, TLS_CERT, TLS_KEY (PEM files: the CA and a client
certificate whose CN is the user TLS_EXTERNAL_USER) it also checks TLS with and without a client
certificate and the EXTERNAL mechanism.
Every check runs under its own alarm, and every blocking call has a timeout, so a broker that stops
answering fails the check instead of hanging the run.
"""
import datetime
import decimal
import os
import signal
import sys
import time
import uuid

import pika
from pika.exceptions import ChannelClosedByBroker, UnroutableError

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
RUN = uuid.uuid4().hex[:8]  # every queue/exchange name of this run carries it
CHECK_TIMEOUT = 20  # seconds per check
CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


def connect():
    params = pika.URLParameters(URL)
    params.socket_timeout = 5
    params.stack_timeout = 10
    params.blocked_connection_timeout = 10
    params.connection_attempts = 1
    return pika.BlockingConnection(params)


def name(prefix):
    return f"warren-it.pika.{RUN}.{prefix}.{uuid.uuid4().hex[:6]}"


def expect(cond, msg):
    if not cond:
        raise AssertionError(msg)


def expect_channel_error(code, text_prefix, fn):
    """fn must make the broker close the channel with `code` and a reply text starting with text_prefix."""
    try:
        fn()
    except ChannelClosedByBroker as e:
        expect(e.reply_code == code, f"expected {code}, got {e.reply_code} {e.reply_text!r}")
        expect(e.reply_text.startswith(text_prefix),
               f"reply text {e.reply_text!r} does not start with {text_prefix!r}")
        return e
    raise AssertionError(f"expected the broker to close the channel with {code}, it did not")


def consume(ch, queue, n, timeout=5.0, ack=True):
    """Consume up to n messages (stops after timeout); returns [(method, props, body)]."""
    got = []
    deadline = time.monotonic() + timeout
    for method, props, body in ch.consume(queue, inactivity_timeout=0.2):
        if method is not None:
            got.append((method, props, body))
            if ack:
                ch.basic_ack(method.delivery_tag)
        if len(got) >= n or time.monotonic() > deadline:
            break
    ch.cancel()
    return got


def get_all(ch, queue, limit=100):
    """basic.get (auto-ack) until the queue is empty; returns the bodies."""
    bodies = []
    for _ in range(limit):
        method, _, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            break
        bodies.append(body)
    return bodies


def ready_count(ch, queue):
    return ch.queue_declare(queue, passive=True).method.message_count


def wait_ready_count(ch, queue, n, timeout=2.0):
    """Poll queue.declare-ok's message_count until it is n: after a nack/reject with requeue the count is
    not guaranteed to be updated when the next method on the channel is answered (RabbitMQ lags)."""
    deadline = time.monotonic() + timeout
    while True:
        count = ready_count(ch, queue)
        if count == n or time.monotonic() > deadline:
            return count
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------ checks
@check
def publish_consume_ack():
    c = connect()
    ch = c.channel()
    q = name("pc")
    ch.queue_declare(q)  # not auto-delete: cancelling the consumer would delete it
    for i in range(100):
        ch.basic_publish("", q, str(i).encode())
    got = consume(ch, q, 100)
    bodies = [int(b) for _, _, b in got]
    expect(bodies == list(range(100)), f"got {len(bodies)} messages, in order: {bodies == sorted(bodies)}")
    expect([m.delivery_tag for m, _, _ in got] == list(range(1, 101)), "delivery tags are not 1..100")
    expect(all(not m.redelivered for m, _, _ in got), "first deliveries flagged redelivered")
    expect(got[0][0].routing_key == q and got[0][0].exchange == "", "delivery exchange/routing key wrong")
    # every message was acked, so nothing comes back
    expect(ready_count(ch, q) == 0, "acked messages still in the queue")
    ch.queue_delete(q)
    c.close()


@check
def basic_get():
    c = connect()
    ch = c.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    expect(q.startswith("amq.gen-"), f"server-named queue is {q!r}")
    expect(ch.basic_get(q) == (None, None, None), "basic.get on an empty queue returned a message")
    for body in (b"one", b"two", b"three"):
        ch.basic_publish("", q, body)
    m, _, body = ch.basic_get(q)
    expect(m is not None and body == b"one", f"first get returned {body!r}")
    expect(m.message_count == 2, f"get-ok message_count={m.message_count}, expected 2 remaining")
    expect(not m.redelivered and m.routing_key == q, "get-ok fields wrong")
    ch.basic_ack(m.delivery_tag)
    m, _, body = ch.basic_get(q, auto_ack=True)
    expect(body == b"two" and m.message_count == 1, f"second get: {body!r} count={m.message_count}")
    expect(ready_count(ch, q) == 1, "queue depth after two gets is not 1")
    c.close()


@check
def topic_routing():
    c = connect()
    ch = c.channel()
    ch.confirm_delivery()
    x = name("topic")
    ch.exchange_declare(x, "topic", auto_delete=True)
    q_star = ch.queue_declare("", exclusive=True).method.queue
    q_hash = ch.queue_declare("", exclusive=True).method.queue
    q_tail = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q_star, x, "stock.*.nyse")
    ch.queue_bind(q_hash, x, "stock.#")
    ch.queue_bind(q_tail, x, "#.error")
    for key in ["stock.ibm.nyse", "stock.ibm.nasdaq", "stock", "stock.a.b.c", "weather.nyse",
                "stock.ibm.nyse.extra", "app.db.error", "error", "stockx.ibm.nyse"]:
        ch.basic_publish(x, key, key.encode())
    star = get_all(ch, q_star)
    hashed = get_all(ch, q_hash)
    tail = get_all(ch, q_tail)
    expect(star == [b"stock.ibm.nyse"], f"'stock.*.nyse' got {star}")
    expect(hashed == [b"stock.ibm.nyse", b"stock.ibm.nasdaq", b"stock", b"stock.a.b.c", b"stock.ibm.nyse.extra"],
           f"'stock.#' got {hashed}")
    expect(tail == [b"app.db.error", b"error"], f"'#.error' got {tail}")
    c.close()


@check
def publisher_confirms_and_mandatory_return():
    c = connect()
    ch = c.channel()
    ch.confirm_delivery()
    q = ch.queue_declare("", exclusive=True).method.queue
    for i in range(200):
        ch.basic_publish("", q, str(i).encode())  # blocks until this publish is confirmed
    expect(ready_count(ch, q) == 200, "not every confirmed message is in the queue")
    x = name("mand")
    ch.exchange_declare(x, "direct", auto_delete=True)
    try:
        ch.basic_publish(x, "nobody-bound", b"lost", mandatory=True)
        raise AssertionError("mandatory publish to an unroutable key did not raise UnroutableError")
    except UnroutableError as e:
        expect(len(e.messages) == 1, f"{len(e.messages)} returned messages")
        ret = e.messages[0]
        expect(ret.method.reply_code == 312 and ret.method.reply_text == "NO_ROUTE",
               f"basic.return {ret.method.reply_code} {ret.method.reply_text!r}, expected 312 'NO_ROUTE'")
        expect(ret.method.exchange == x and ret.method.routing_key == "nobody-bound" and ret.body == b"lost",
               "basic.return carries the wrong exchange/key/body")
    # not mandatory: silently dropped but still confirmed; the channel stays open
    ch.basic_publish(x, "nobody-bound", b"dropped")
    expect(ch.is_open, "channel closed after an unroutable publish")
    ch.basic_publish("", q, b"after")
    expect(ready_count(ch, q) == 201, "publish after a return did not arrive")
    ch.exchange_delete(x)  # auto-delete only acts when a last binding goes; this one never had one
    c.close()


@check
def publish_to_missing_exchange_is_404():
    c = connect()
    ch = c.channel()
    ch.confirm_delivery()  # makes the publish wait, so the channel close is seen here
    missing = name("no-such-exchange")
    e = expect_channel_error(404, "NOT_FOUND", lambda: ch.basic_publish(missing, "k", b"x"))
    expect(missing in e.reply_text, f"reply text does not name the exchange: {e.reply_text!r}")
    expect(c.is_open, "connection closed by a channel error")
    c.close()


@check
def headers_exchange_all_any():
    c = connect()
    ch = c.channel()
    ch.confirm_delivery()
    x = name("headers")
    ch.exchange_declare(x, "headers", auto_delete=True)
    q_all = ch.queue_declare("", exclusive=True).method.queue
    q_any = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q_all, x, "", arguments={"x-match": "all", "format": "pdf", "type": "report"})
    ch.queue_bind(q_any, x, "", arguments={"x-match": "any", "format": "pdf", "type": "report"})
    cases = [
        ("both", {"format": "pdf", "type": "report"}),
        ("both+extra", {"format": "pdf", "type": "report", "lang": "en"}),
        ("one", {"format": "pdf"}),
        ("wrong-value", {"format": "zip", "type": "log"}),
        ("none", None),
    ]
    for body, headers in cases:
        ch.basic_publish(x, "ignored", body.encode(), pika.BasicProperties(headers=headers))
    all_got = get_all(ch, q_all)
    any_got = get_all(ch, q_any)
    expect(all_got == [b"both", b"both+extra"], f"x-match=all got {all_got}")
    expect(any_got == [b"both", b"both+extra", b"one"], f"x-match=any got {any_got}")
    c.close()


@check
def reject_requeue_sets_redelivered():
    c = connect()
    ch = c.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"again")
    first = consume(ch, q, 1, ack=False)
    expect(len(first) == 1, "first delivery did not arrive")
    m, _, _ = first[0]
    expect(not m.redelivered, "first delivery already flagged redelivered")
    ch.basic_reject(m.delivery_tag, requeue=True)
    second = consume(ch, q, 1, ack=False)
    expect(len(second) == 1, "rejected message was not redelivered")
    m2, _, body = second[0]
    expect(m2.redelivered and body == b"again", f"redelivered={m2.redelivered} body={body!r}")
    expect(m2.delivery_tag > m.delivery_tag, "delivery tag did not grow on redelivery")
    ch.basic_reject(m2.delivery_tag, requeue=False)  # drops it
    expect(ch.basic_get(q) == (None, None, None), "message rejected without requeue came back")
    c.close()


@check
def channel_error_404_leaves_connection_usable():
    c = connect()
    bad = c.channel()
    missing = name("missing")
    e = expect_channel_error(404, "NOT_FOUND - no queue", lambda: bad.queue_declare(missing, passive=True))
    expect(missing in e.reply_text, f"reply text does not name the queue: {e.reply_text!r}")
    expect(bad.is_closed, "channel still open after the broker closed it")
    expect(c.is_open, "connection closed by a channel-level error")
    good = c.channel()
    expect(good.channel_number != 0, "bad channel number")
    q = good.queue_declare("", exclusive=True).method.queue
    good.basic_publish("", q, b"still works")
    _, _, body = good.basic_get(q, auto_ack=True)
    expect(body == b"still works", "a new channel did not work after a channel error")
    c.close()


@check
def queue_purge_counts():
    c = connect()
    ch = c.channel()
    ch.confirm_delivery()
    q = ch.queue_declare("", exclusive=True).method.queue
    expect(ch.queue_purge(q).method.message_count == 0, "purging an empty queue did not report 0")
    for _ in range(7):
        ch.basic_publish("", q, b"p")
    held, _, _ = ch.basic_get(q)  # one unacked message: purge leaves it alone
    n = ch.queue_purge(q).method.message_count
    expect(n == 6, f"purge-ok message_count={n}, expected 6 (7 published, 1 unacked)")
    expect(ready_count(ch, q) == 0, "queue not empty after purge")
    ch.basic_nack(held.delivery_tag, requeue=True)
    n = wait_ready_count(ch, q, 1)
    expect(n == 1, f"{n} ready after requeueing the message held over the purge, expected 1")
    m, _, _ = ch.basic_get(q, auto_ack=True)
    expect(m is not None and m.redelivered, "requeued message missing or not flagged redelivered")
    c.close()


@check
def exclusive_queue_of_other_connection_is_405():
    owner = connect()
    other = connect()
    try:
        q = owner.channel().queue_declare("", exclusive=True).method.queue
        expect_channel_error(405, "RESOURCE_LOCKED", lambda: other.channel().queue_declare(q, passive=True))
        expect_channel_error(405, "RESOURCE_LOCKED",
                             lambda: other.channel().basic_consume(q, lambda *a: None))
        expect(other.is_open, "405 closed the other connection")
        # the owner still has its queue
        expect(owner.channel().queue_declare(q, passive=True).method.queue == q, "owner lost its queue")
    finally:
        owner.close()
        other.close()


@check
def properties_round_trip():
    c = connect()
    ch = c.channel()
    q = ch.queue_declare("", exclusive=True, arguments={"x-max-priority": 10}).method.queue
    ts = int(time.time())
    headers = {
        "str": "text", "int": 42, "neg": -7, "big": 2 ** 40, "bool": True, "false": False,
        "decimal": decimal.Decimal("3.14"), "void": None,
        "when": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
        "list": [1, "two", [3, 4], {"five": 5}],
        "table": {"nested": {"deep": "yes", "n": 1}, "empty": {}},
    }
    props = pika.BasicProperties(content_type="application/json", content_encoding="utf-8",
                                 headers=headers, delivery_mode=2, priority=5,
                                 correlation_id=f"corr-{RUN}", reply_to="reply.queue",
                                 message_id=f"mid-{RUN}", timestamp=ts, type="order.created",
                                 app_id="warren-interop")
    body = '{"unicode":"h\u00e9llo \u2603"}'.encode()
    ch.basic_publish("", q, body, props)
    got = consume(ch, q, 1)
    expect(len(got) == 1, "message did not arrive")
    _, p, got_body = got[0]
    expect(got_body == body, "body changed")
    for field in ["content_type", "content_encoding", "delivery_mode", "priority", "correlation_id",
                  "reply_to", "message_id", "timestamp", "type", "app_id"]:
        expect(getattr(p, field) == getattr(props, field),
               f"{field}: got {getattr(p, field)!r}, sent {getattr(props, field)!r}")
    for field in ["expiration", "user_id", "cluster_id"]:
        expect(getattr(p, field) is None, f"{field} appeared: {getattr(p, field)!r}")
    for k, v in headers.items():
        expect(p.headers.get(k) == v, f"header {k}: got {p.headers.get(k)!r}, sent {v!r}")
    expect(set(p.headers) == set(headers), f"header keys changed: {sorted(p.headers)}")
    c.close()


# ------------------------------------------------------------------------------------------ quorum
# Quorum queues' client-visible rules (RabbitMQ 3.10): basic.get always carries x-delivery-count,
# a returned message goes to the back, queue.delete if-empty ends the connection.
@check
def quorum_get_counts_and_requeue_goes_to_the_back():
    c = connect()
    ch = c.channel()
    q = name("qq")
    ch.queue_declare(q, durable=True, arguments={"x-queue-type": "quorum"})
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("", q, str(i).encode())
    m, p, body = ch.basic_get(q)
    expect(body == b"0" and (p.headers or {}).get("x-delivery-count") == 0,
           f"first get: {body!r} headers={p.headers!r}")
    ch.basic_nack(m.delivery_tag, requeue=True)
    got = []
    for _ in range(3):
        m, p, body = ch.basic_get(q, auto_ack=True)
        got.append((body, (p.headers or {}).get("x-delivery-count"), m.redelivered))
    expect(got == [(b"1", 0, False), (b"2", 0, False), (b"0", 1, True)], f"after nack: {got!r}")
    ch.queue_delete(q)
    c.close()


@check
def quorum_delete_if_empty_closes_the_connection():
    c = connect()
    q = name("qq")
    c.channel().queue_declare(q, durable=True, arguments={"x-queue-type": "quorum"})
    try:
        c.channel().queue_delete(q, if_empty=True)
        raise AssertionError("queue.delete if-empty on a quorum queue was accepted")
    except pika.exceptions.ConnectionClosedByBroker as e:
        expect(e.reply_code == 540 and "if-empty flag set are not supported by quorum queues"
               in e.reply_text, f"{e.reply_code} {e.reply_text!r}")
    c = connect()
    ch = c.channel()
    ch.queue_declare(q, passive=True)
    ch.queue_delete(q)
    c.close()


# ----------------------------------------------------------------------------------------- streams
# RabbitMQ streams (x-queue-type: stream) used the way a pika user does: durable declare, confirms,
# basic.qos + acks, x-stream-offset as a consume argument, offsets in the x-stream-offset header.
def declare_stream(ch, tag, n=0):
    """A new durable stream (name carries RUN) holding n messages b'0'..b'<n-1>', each confirmed."""
    q = name(tag)
    ch.queue_declare(q, durable=True, arguments={"x-queue-type": "stream"})
    ch.confirm_delivery()
    for i in range(n):
        ch.basic_publish("", q, str(i).encode())  # blocks until confirmed
    return q


def finish_stream(c, q):
    """Close the check's connection and delete its (durable) stream on a connection of its own, whatever
    state the check left. Runs in `finally`: if the check's alarm already fired, this gets 5 s of its own."""
    signal.alarm(signal.alarm(0) or 5)
    if c.is_open:
        c.close()
    c2 = connect()
    try:
        c2.channel().queue_delete(q)
    finally:
        c2.close()


def stream_consume(ch, q, offset, n, prefetch=10, timeout=3.0, ack=True):
    """basic.qos(prefetch) then consume q from x-stream-offset `offset` until n deliveries or timeout;
    acks each (unless ack=False). Returns [(method, props, body)]; the consumer stays subscribed."""
    ch.basic_qos(prefetch_count=prefetch)
    got = []

    def on_message(chan, method, props, body):
        got.append((method, props, body))
        if ack:
            chan.basic_ack(method.delivery_tag)

    args = None if offset is None else {"x-stream-offset": offset}
    ch.basic_consume(q, on_message, arguments=args)
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        ch.connection.process_data_events(time_limit=0.05)
    return got


def stream_offsets(got):
    return [(p.headers or {}).get("x-stream-offset") for _, p, _ in got]


@check
def stream_publish_confirm_consume_first_with_acks():
    c = connect()
    ch = c.channel()
    q = declare_stream(ch, "stream-first", 30)
    try:
        got = stream_consume(ch, q, "first", 30, prefetch=7)
        bodies = [int(b) for _, _, b in got]
        expect(bodies == list(range(30)), f"from 'first' got {len(bodies)} messages: {bodies}")
        offsets = stream_offsets(got)
        expect(offsets == list(range(30)), f"x-stream-offset headers {offsets}, expected 0..29")
        # RabbitMQ sends the offset as a signed 64-bit long ('l'); pika decodes only 'l' to compat.long
        expect(all(type(o) is pika.compat.long for o in offsets),
               f"x-stream-offset not an AMQP long 'l': {sorted({type(o).__name__ for o in offsets})}")
        expect(all(not m.redelivered for m, _, _ in got), "stream deliveries flagged redelivered")
        expect(got[0][0].exchange == "" and got[0][0].routing_key == q, "delivery exchange/routing key wrong")
        expect(ch.queue_declare(q, passive=True).method.queue == q, "acks removed the stream")
    finally:
        finish_stream(c, q)


@check
def stream_prefetch_is_credit_and_acks_remove_nothing():
    c = connect()
    ch = c.channel()
    q = declare_stream(ch, "stream-credit", 20)
    try:
        got = stream_consume(ch, q, "first", 20, prefetch=5, timeout=1.0, ack=False)
        expect(len(got) == 5, f"{len(got)} unacked deliveries with prefetch 5, expected 5")
        ch.basic_ack(got[-1][0].delivery_tag, multiple=True)  # 5 credits back: 5 more
        deadline = time.monotonic() + 3.0
        while len(got) < 10 and time.monotonic() < deadline:
            c.process_data_events(time_limit=0.05)
        c.process_data_events(time_limit=0.3)
        expect(len(got) == 10, f"{len(got)} deliveries after acking 5 (multiple), expected 10")
        expect(stream_offsets(got) == list(range(10)), f"offsets {stream_offsets(got)}")
        # a second reader still replays everything: the acks removed nothing
        ch2 = c.channel()
        again = stream_consume(ch2, q, "first", 20, prefetch=20)
        expect([int(b) for _, _, b in again] == list(range(20)), f"replay after acks got {len(again)} messages")
    finally:
        finish_stream(c, q)


@check
def stream_consume_from_absolute_offset():
    c = connect()
    ch = c.channel()
    q = declare_stream(ch, "stream-offset", 20)
    try:
        got = stream_consume(ch, q, 13, 7)
        c.process_data_events(time_limit=0.3)  # nothing before 13 may follow
        expect(stream_offsets(got) == list(range(13, 20)), f"from offset 13 got offsets {stream_offsets(got)}")
        expect([int(b) for _, _, b in got] == list(range(13, 20)), "bodies do not match their offsets")
    finally:
        finish_stream(c, q)


@check
def stream_consume_next_gets_only_new_messages():
    c = connect()
    ch = c.channel()
    q = declare_stream(ch, "stream-next", 10)
    try:
        got = stream_consume(ch, q, "next", 1, timeout=0.7)
        expect(got == [], f"'next' delivered {len(got)} old messages, offsets {stream_offsets(got)}")
        pub = c.channel()
        pub.confirm_delivery()
        for body in (b"new-a", b"new-b", b"new-c"):
            pub.basic_publish("", q, body)
        deadline = time.monotonic() + 3.0
        while len(got) < 3 and time.monotonic() < deadline:
            c.process_data_events(time_limit=0.05)
        expect([b for _, _, b in got] == [b"new-a", b"new-b", b"new-c"], f"'next' got {[b for _, _, b in got]}")
        expect(stream_offsets(got) == [10, 11, 12], f"offsets of the new messages {stream_offsets(got)}")
    finally:
        finish_stream(c, q)


@check
def stream_basic_get_is_refused():
    c = connect()
    ch = c.channel()
    q = declare_stream(ch, "stream-get", 1)
    try:
        try:
            ch.basic_get(q)
            raise AssertionError("basic.get on a stream was not refused")
        except pika.exceptions.ConnectionClosedByBroker as e:  # RabbitMQ closes the connection
            expect(e.reply_code == 540, f"expected 540, got {e.reply_code} {e.reply_text!r}")
            prefix = "NOT_IMPLEMENTED - basic.get not supported by stream queues"
            expect(e.reply_text.startswith(prefix), f"reply text {e.reply_text!r} does not start with {prefix!r}")
            expect(q in e.reply_text, f"reply text does not name the stream: {e.reply_text!r}")
    finally:
        finish_stream(c, q)


@check
def stream_consume_without_prefetch_is_refused():
    c = connect()
    ch = c.channel()
    q = declare_stream(ch, "stream-noqos", 1)
    try:
        e = expect_channel_error(406, "PRECONDITION_FAILED - consumer prefetch count is not set for",
                                 lambda: ch.basic_consume(q, lambda *a: None,
                                                          arguments={"x-stream-offset": "first"}))
        expect(q in e.reply_text, f"reply text does not name the stream: {e.reply_text!r}")
        expect(c.is_open, "a 406 closed the connection")
    finally:
        finish_stream(c, q)


@check
def stream_declare_refusals():
    c = connect()
    q = name("stream-bad")
    for kwargs, word in [({"durable": False}, "non-durable"),
                         ({"durable": True, "exclusive": True}, "exclusive-owner"),
                         ({"durable": True, "auto_delete": True}, "auto-delete")]:
        ch = c.channel()
        expect_channel_error(406, f"PRECONDITION_FAILED - invalid property '{word}' for queue '{q}'",
                             lambda: ch.queue_declare(q, arguments={"x-queue-type": "stream"}, **kwargs))
        expect(c.is_open, "a 406 closed the connection")
    ch = c.channel()
    expect_channel_error(406, "PRECONDITION_FAILED - invalid arg 'x-max-age'",
                         lambda: ch.queue_declare(q, durable=True,
                                                  arguments={"x-queue-type": "stream", "x-max-age": "7DD"}))
    ch = c.channel()
    expect_channel_error(406, "PRECONDITION_FAILED - invalid arg 'x-max-length'",
                         lambda: ch.queue_declare(q, durable=True,
                                                  arguments={"x-queue-type": "stream", "x-max-length": 10}))
    # none of the refused declares created it
    expect_channel_error(404, "NOT_FOUND", lambda: c.channel().queue_declare(q, passive=True))
    c.close()


# --------------------------------------------------------------------------------------------- TLS
AMQPS_URL = os.environ.get("AMQPS_URL")


def tls_connect(client_cert, credentials=None):
    import ssl
    ctx = ssl.create_default_context(cafile=os.environ["TLS_CA"])
    if client_cert:
        ctx.load_cert_chain(os.environ["TLS_CERT"], os.environ["TLS_KEY"])
    params = pika.URLParameters(AMQPS_URL)
    params.ssl_options = pika.SSLOptions(ctx, "localhost")
    if credentials is not None:
        params.credentials = credentials
    params.socket_timeout = 5
    params.stack_timeout = 10
    params.connection_attempts = 1
    return pika.BlockingConnection(params)


def tls_round_trip(c, tag):
    ch = c.channel()
    q = name(tag)
    ch.queue_declare(q, auto_delete=False)
    for i in range(50):
        ch.basic_publish("", q, str(i).encode())
    got = consume(ch, q, 50)
    expect([int(b) for _, _, b in got] == list(range(50)), f"got {len(got)} of 50 over TLS")
    ch.queue_delete(q)


if AMQPS_URL:
    @check
    def tls_without_client_certificate():
        c = tls_connect(False)
        tls_round_trip(c, "tls")
        c.close()

    @check
    def tls_with_client_certificate():
        c = tls_connect(True)
        tls_round_trip(c, "tlscert")
        c.close()

    @check
    def tls_external_login():
        c = tls_connect(True, pika.credentials.ExternalCredentials())
        tls_round_trip(c, "external")
        c.close()

    @check
    def tls_external_without_certificate_is_refused():
        try:
            tls_connect(False, pika.credentials.ExternalCredentials())
        except pika.exceptions.ProbableAuthenticationError as e:
            expect("403" in str(e) and "EXTERNAL" in str(e), f"unexpected refusal: {e}")
            return
        raise AssertionError("EXTERNAL without a client certificate was accepted")


# -------------------------------------------------------------------------------------------- main
def _alarm(*_):
    raise TimeoutError(f"check did not finish within {CHECK_TIMEOUT}s")


def main():
    passed = failed = 0
    signal.signal(signal.SIGALRM, _alarm)
    for fn in CHECKS:
        signal.alarm(CHECK_TIMEOUT)
        try:
            fn()
            passed += 1
            print(f"PASS pika.{fn.__name__}", flush=True)
        except BaseException as e:  # noqa: BLE001 - report every failure and keep going
            failed += 1
            reason = f"{type(e).__name__}: {str(e) or repr(e)}".replace("\n", " ")[:300]
            print(f"FAIL pika.{fn.__name__}: {reason}", flush=True)
        finally:
            signal.alarm(0)
    print(f"{passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
