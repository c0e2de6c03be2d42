#!/usr/bin/env python3
"""Writes the hand-made part of the seed corpus (fuzz/corpus/{frame,content_header,field_table}/).
The rest of the corpus (and all of fuzz/corpus/connection/) was picked from long fuzz runs."""
import os, struct, random

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "corpus")

def ss(s): s = s.encode() if isinstance(s, str) else s; return bytes([len(s)]) + s
def ls(s): s = s.encode() if isinstance(s, str) else s; return struct.pack(">I", len(s)) + s
def val(v):
    t, x = v
    return t.encode() + {
        't': lambda: bytes([x]), 'b': lambda: struct.pack(">b", x), 'B': lambda: bytes([x]),
        's': lambda: struct.pack(">h", x), 'u': lambda: struct.pack(">H", x),
        'I': lambda: struct.pack(">i", x), 'i': lambda: struct.pack(">I", x),
        'l': lambda: struct.pack(">q", x), 'f': lambda: struct.pack(">f", x),
        'd': lambda: struct.pack(">d", x), 'D': lambda: bytes([x[0]]) + struct.pack(">I", x[1]),
        'S': lambda: ls(x), 'T': lambda: struct.pack(">Q", x), 'F': lambda: table(x),
        'A': lambda: ls(b"".join(val(e) for e in x)), 'x': lambda: ls(x), 'V': lambda: b"",
    }[t]()
def table(d): return ls(b"".join(ss(k) + val(v) for k, v in d))

def frame(kind, ch, payload): return bytes([kind]) + struct.pack(">HI", ch, len(payload)) + payload + b"\xce"
def method(ch, cls, mid, args=b""): return frame(1, ch, struct.pack(">HH", cls, mid) + args)
def props(flags, fields=b""): return struct.pack(">H", flags) + fields
def header(ch, size, p): return frame(2, ch, struct.pack(">HHQ", 60, 0, size) + p)

ARGS = table([("x-message-ttl", ('I', 1000)), ("x-dead-letter-exchange", ('S', "dlx")),
              ("x-max-priority", ('b', 5)), ("x-queue-type", ('S', "classic"))])
NESTED = table([("a", ('F', [("b", ('A', [('I', 1), ('S', "x"), ('F', [("c", ('t', 1))])]))]))])
HEADERS = table([("x-match", ('S', "any")), ("k", ('S', "v")), ("n", ('l', 7))])
PROPS = props(0x8000 | 0x2000 | 0x1000 | 0x0100, ss("text/plain") + HEADERS + b"\x02" + ss("60000"))

frames = {
    "heartbeat": frame(8, 0, b""),
    "publish": method(1, 60, 40, b"\0\0" + ss("amq.direct") + ss("rk") + b"\x01"),
    "publish_nonutf8": method(1, 60, 40, b"\0\0" + ss(b"\xff\xfe") + ss("rk") + b"\x00"),
    "ack": method(1, 60, 80, struct.pack(">Q", 3) + b"\x01"),
    "nack": method(1, 60, 120, struct.pack(">Q", 3) + b"\x03"),
    "queue_declare": method(1, 50, 10, b"\0\0" + ss("q") + b"\x02" + ARGS),
    "exchange_declare": method(1, 40, 10, b"\0\0" + ss("e") + ss("headers") + b"\x02" + NESTED),
    "queue_bind": method(1, 50, 20, b"\0\0" + ss("q") + ss("amq.match") + ss("") + b"\0" + HEADERS),
    "consume": method(1, 60, 20, b"\0\0" + ss("q") + ss("c1") + b"\0" + table([("x-priority", ('I', 3))])),
    "qos_size": method(1, 60, 10, struct.pack(">IHB", 1, 10, 0)),
    "qos": method(1, 60, 10, struct.pack(">IHB", 0, 10, 1)),
    "start_ok": method(0, 10, 11, table([("capabilities", ('F', [("connection.blocked", ('t', 1))]))])
                       + ss("PLAIN") + ls(b"\0guest\0guest") + ss("en_US")),
    "tune_ok": method(0, 10, 31, struct.pack(">HIH", 0, 131072, 60)),
    "open": method(0, 10, 40, ss("/") + ss("") + b"\0"),
    "channel_close": method(1, 20, 40, struct.pack(">H", 200) + ss("bye") + struct.pack(">HH", 0, 0)),
    "confirm_tx": method(1, 85, 10, b"\0") + method(2, 90, 10),
    "content": method(1, 60, 40, b"\0\0" + ss("") + ss("q") + b"\0") + header(1, 5, PROPS) + frame(3, 1, b"hello"),
    "unknown_method": method(1, 99, 1),
    "bad_end": frame(1, 1, b"\0\x3c\0\x28")[:-1] + b"\xab",
    "bad_type": frame(9, 0, b""),
    "too_big": b"\x03\0\x01\0\x02\0\0",
    "header_short": frame(2, 1, b"\0\x3c\0\0"),
    "truncated": method(1, 50, 10, b"\0\0" + ss("q"))[:-3],
}
headers = {
    "empty": props(0),
    "all": props(0xfffc, ss("text/plain") + ss("gzip") + HEADERS + b"\x02\x05" + ss("corr") + ss("amq.rabbitmq.reply-to")
                 + ss("1000") + ss("id") + struct.pack(">Q", 1) + ss("type") + ss("guest") + ss("app") + ss("cl")),
    "props": PROPS,
    "continuation": props(0x0001, b"\0\0"),
    "trailing": props(0x1000, b"\x02\x00"),
    "truncated": props(0x8000, b"\x05ab"),
    "cc": props(0x2000, table([("CC", ('A', [('S', "a"), ('S', "b")])), ("BCC", ('A', [('S', "c")]))])),
    "delay": props(0x2000, table([("x-delay", ('l', 5000))])),
    "death": props(0x2000, table([("x-death", ('A', [('F', [("queue", ('S', "q")), ("reason", ('S', "expired")), ("count", ('l', 1))])]))])),
    "dedup": props(0x2000, table([("x-deduplication-header", ('S', "k1"))])),
    "bad_expiration": props(0x0100, ss("-5")),
}
tables = {
    "empty": table([]),
    "args": ARGS,
    "nested": NESTED,
    "headers": HEADERS,
    "types": table([("t", ('t', 1)), ("b", ('b', -1)), ("B", ('B', 255)), ("s", ('s', -2)), ("u", ('u', 2)),
                    ("I", ('I', -3)), ("i", ('i', 3)), ("l", ('l', -4)), ("f", ('f', 1.5)), ("d", ('d', 2.5)),
                    ("D", ('D', (2, 12345))), ("S", ('S', "s")), ("T", ('T', 1700000000)), ("x", ('x', b"\0\1")),
                    ("V", ('V', None))]),
    "nan": table([("f", ('d', float("nan")))]),
    "bad_type": ls(b"\x01kZ"),
    "bad_len": b"\0\0\0\x10\x01k",
    "array_of_tables": table([("a", ('A', [('F', [("x", ('I', 1))]), ('F', [])]))]),
    "quorum": table([("x-queue-type", ('S', "quorum")), ("x-max-in-memory-length", ('I', 5)), ("x-overflow", ('S', "drop-head"))]),
    "ttl_types": table([("x-message-ttl", ('S', "1000")), ("x-expires", ('l', -1)), ("x-max-length", ('d', 1.0))]),
    "json_keys": table([("", ('S', "")), ("k" * 255, ('l', 2**63 - 1))]),
    "float_int": table([("x-match", ('S', "all")), ("k", ('f', 1.0)), ("n", ('d', 1.0))]),
}
# A table nested deeper than the broker allows (the depth check refuses it).
deep = table([])
for _ in range(70):
    deep = ls(ss("a") + b"F" + deep)
tables["too_deep"] = deep
headers["too_deep"] = props(0x2000, deep)

for name, d in [("frame", frames), ("content_header", headers), ("field_table", tables)]:
    os.makedirs(os.path.join(ROOT, name), exist_ok=True)
    for k, v in d.items():
        if name == "frame":
            v = b"\x00" + v  # the selector byte: frame_max 4096
        with open(os.path.join(ROOT, name, "seed-" + k), "wb") as f:
            f.write(v)
# connection: random inputs of a few sizes (any bytes make a script); fuzz runs add the rest.
rng = random.Random(12)
os.makedirs(os.path.join(ROOT, "connection"), exist_ok=True)
for n in [0, 8, 16, 32, 64, 96, 128, 192, 256, 384, 512, 768]:
    with open(os.path.join(ROOT, "connection", "seed-random-%d" % n), "wb") as f:
        f.write(bytes(rng.randrange(256) for _ in range(n)))
