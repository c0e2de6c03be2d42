"""A small Celery app used as an interop check: AMQP broker from $CELERY_BROKER_URL, results over rpc://.

The queue name comes from $CELERY_QUEUE so each run (worker and client alike) uses its own queue.
"""
import os

from celery import Celery

BROKER_URL = os.environ.get("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
QUEUE = os.environ.get("CELERY_QUEUE", "warren-it.celery")

app = Celery("tasks", broker=BROKER_URL, backend="rpc://")
app.conf.update(
    task_default_queue=QUEUE,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=3,
    broker_connection_timeout=5,
    result_expires=300,
)


@app.task
def add(x, y):
    return x + y


@app.task
def mul(x, y):
    return x * y


@app.task
def xsum(numbers):
    return sum(numbers)


class Flaky(Exception):
    pass


@app.task(bind=True, max_retries=5)
def flaky(self, value):
    """Fails on its first two runs and succeeds on the third (self.request.retries == 2).

    The retries go through the broker: a short countdown makes them ETA messages that the worker holds
    unacked while raising its prefetch with basic.qos, which is worth exercising."""
    if self.request.retries < 2:
        raise self.retry(exc=Flaky(f"attempt {self.request.retries + 1} fails"), countdown=0.2)
    return f"{value} after {self.request.retries} retries"
