"""Drives the Celery app in tasks.py through a running worker and prints 'PASS name' / 'FAIL name: reason'
per check, then 'N passed, M failed'; exits 1 on any failure. Every wait has a timeout."""
import sys
import time

from celery import chain, chord, group

from tasks import add, app, flaky, mul, xsum

TIMEOUT = 20  # seconds for any one result
CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


def expect(cond, msg):
    if not cond:
        raise AssertionError(msg)


class Skip(Exception):
    pass


@check
def worker_ping():
    """The worker answers a broadcast ping (celery.pidbox fanout exchange, reply via a direct exchange)."""
    deadline = time.monotonic() + 30
    while True:
        replies = app.control.ping(timeout=1.0)
        if replies:
            return
        if time.monotonic() > deadline:
            raise AssertionError("no worker answered control.ping within 30 s")


@check
def single_task():
    r = add.delay(2, 3)
    got = r.get(timeout=TIMEOUT)
    expect(got == 5, f"add(2, 3) returned {got!r}")
    expect(r.successful() and r.state == "SUCCESS", f"state {r.state}")


@check
def task_error_propagates():
    r = add.delay("a", 1)
    try:
        r.get(timeout=TIMEOUT)
    except TypeError:
        expect(r.state == "FAILURE", f"state {r.state}")
        return
    raise AssertionError("add('a', 1) did not raise TypeError")


@check
def chain_add_mul():
    got = chain(add.s(2, 2), mul.s(8))().get(timeout=TIMEOUT)
    expect(got == 32, f"(add.s(2, 2) | mul.s(8)) returned {got!r}")


@check
def group_of_ten():
    got = group(add.s(i, i) for i in range(10))().get(timeout=TIMEOUT)
    expect(got == [2 * i for i in range(10)], f"group returned {got!r}")


@check
def xsum_over_group_results():
    parts = group(add.s(i, i) for i in range(5))().get(timeout=TIMEOUT)
    got = xsum.delay(parts).get(timeout=TIMEOUT)
    expect(got == 20, f"xsum({parts!r}) returned {got!r}")


@check
def flaky_retries_then_succeeds():
    got = flaky.delay("ok").get(timeout=TIMEOUT)
    expect(got == "ok after 2 retries", f"flaky returned {got!r}")


@check
def chord_xsum():
    """Optional: the rpc:// backend cannot run chords in every Celery version; then this is skipped."""
    try:
        r = chord(add.s(i, i) for i in range(5))(xsum.s())
    except NotImplementedError as e:
        raise Skip(f"result backend rpc:// does not support chords: {str(e).splitlines()[0]}")
    got = r.get(timeout=TIMEOUT)
    expect(got == 20, f"chord returned {got!r}")


def main():
    passed = failed = 0
    for fn in CHECKS:
        try:
            fn()
            passed += 1
            print(f"PASS celery.{fn.__name__}", flush=True)
        except Skip as e:
            print(f"SKIP celery.{fn.__name__}: {e}", flush=True)
        except BaseException as e:  # noqa: BLE001 - report every failure and keep going
            failed += 1
            reason = f"{type(e).__name__}: {str(e) or repr(e)}".replace("\n", " ")[:300]
            print(f"FAIL celery.{fn.__name__}: {reason}", flush=True)
    print(f"{passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
