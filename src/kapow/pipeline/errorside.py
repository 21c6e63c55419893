"""The error topics, their publisher and the redrive, made ready beside the consumer's start, not before it.

Checking the error topics takes the broker a round trip, creating them (a first start) 50-80 ms; the consumer's
group join and its first fetch take as long, and neither needs the other. So the topics are prepared on a thread
while the loop subscribes and fetches, and the loop waits for them only before it handles its first records, the
first step that may publish an error record. The redrive, which reads the system-errors topic, starts once they
are ready. A failure to prepare them stops the writer with the same one line as before, and before any record is
handled: nothing is landed or committed without error topics to fall back on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import Future
from typing import Any

from kapow.config import Config
from kapow.deadletter.publisher import ErrorPublisher
from kapow.kafka.factory import KafkaClients


class ErrorSide:
    """Owned by the loop's thread; only :meth:`_prepare` runs on its own thread, and only sets the future."""

    def __init__(self, config: Config, clients: KafkaClients, healthy: Callable[..., Any]) -> None:
        self._config = config
        self._clients = clients
        self._healthy = healthy
        self._topics: Future[int] = Future()
        self.publisher: ErrorPublisher | None = None
        self.redriver: Any = None
        self._thread = threading.Thread(target=self._prepare, name="kapow-error-topics", daemon=True)
        self._thread.start()

    def _prepare(self) -> None:
        try:
            self._topics.set_result(self._clients.prepare_topics())
        except BaseException as exc:  # raised again in the loop's thread, by ready()
            self._topics.set_exception(exc)

    def ready(self, *, wait: bool, stop: threading.Event | None = None) -> ErrorPublisher | None:
        """The publisher, once the topics are ready; None while they are still being prepared, unless ``wait``,
        which waits for them, but not past a ``stop`` request (a SIGTERM while a slow broker makes them).

        Raises what preparing them raised (a :class:`~kapow.errors.KapowError` naming the topic).
        """
        if self.publisher is None:
            while not self._topics.done():
                if not wait or (stop is not None and stop.is_set()):
                    return None
                futures.wait([self._topics], timeout=0.05)
            max_bytes = self._topics.result()
            k = self._config.kafka
            self.publisher = ErrorPublisher(self._clients.producer(max_bytes), user_topic=k.user_errors_topic,
                                            system_topic=k.system_errors_topic, max_bytes=max_bytes)
            if self._config.pipeline.redrive:
                from kapow.deadletter.redrive import Redriver

                self.redriver = Redriver(self._config, self._healthy)
                self.redriver.start()
        return self.publisher

    def close(self, timeout: float) -> bool:
        """Stop the redrive, and wait up to ``timeout`` for a preparation still running; True when none is.

        librdkafka's admin calls must not be running while the interpreter exits: a SIGTERM 0.3 s into a start,
        while the topics were being created, ended one writer in SIGSEGV after "writer stopped" (CI). The caller
        leaves with ``os._exit`` when this says False.
        """
        if self.redriver is not None:
            self.redriver.stop(timeout=1.0)
        self._thread.join(timeout)
        return not self._thread.is_alive()
