"""The writer's main loop: consume → sort → persist (lanes) → publish errors → commit, never blocked by one table.

One thread owns the consumer, the error producer and the commit window. Sorted rows are handed to the database
lanes (:mod:`kapow.pipeline.persist`), which answer through a queue; the loop drains the answers between polls,
so a held table or a dead database delays only its own packets while everything else is consumed and landed.
Offsets are committed in consumption order, only over batches whose every packet has landed or sits,
acknowledged, on an error topic (:mod:`kapow.pipeline.commit`). Memory is bounded: past
``pipeline.max_buffer_bytes`` of unanswered packets the consumer pauses, and what is held longest is parked.

Rebalances use the eager protocol: when partitions are revoked the loop first finishes and commits what it can
within ``shutdown_deadline_s``, then drops the rest (the next owner consumes it again from the committed
offsets; replays are no-ops). Shutdown (SIGTERM/SIGINT) does the same, then leaves the group; it returns within
the deadline plus a few seconds, whatever is stuck.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import Any

from confluent_kafka import KafkaException, TopicPartition

from kapow import metrics
from kapow.config import Config
from kapow.deadletter.publisher import ErrorPublisher
from kapow.errors import ConfigError
from kapow.kafka.factory import KafkaClients, LibrdkafkaClients
from kapow.kafka.offsets import assign_from, start_offsets
from kapow.kafka.unreadable import Unreadable
from kapow.pipeline.batch import Batch, BatchSizer, TopicCounts
from kapow.pipeline.commit import CommitWindow
from kapow.pipeline.consume import Revoked, consume_bounded
from kapow.pipeline.errorside import ErrorSide
from kapow.pipeline.gauges import DestinationsView, refresh_gauges
from kapow.pipeline.observe import Observer
from kapow.pipeline.persist import Persister
from kapow.pipeline.process import Trimmer, bounded, tune_gc
from kapow.pipeline.readahead import ReadAhead
from kapow.pipeline.sort import Sorter
from kapow.pipeline.work import PACKET_OVERHEAD, ErrorRecord, WorkResult, record_bytes

log = logging.getLogger("kapow.writer")

MAX_WINDOW = 20_000  # batches consumed and not committed; past it the consumer pauses like for bytes
CLOSE_TIMEOUT_S = 3.0


class Writer:
    """Runs the pipeline until :meth:`stop` is called (or a signal arrives, via :meth:`install_signals`)."""

    def __init__(self, config: Config, *, clients: KafkaClients | None = None,
                 persister: Persister | None = None) -> None:
        self.config = config
        self.clients = clients or LibrdkafkaClients(config)
        self.persister = persister or Persister(config)
        self.sorter = Sorter(config)
        p = config.pipeline
        self.sizer = BatchSizer(p.batch_max_messages, p.batch_spread_max_messages, p.max_buffer_bytes)
        self.observer = Observer(config)
        self.window: CommitWindow[Batch] = CommitWindow()
        self._batches: dict[int, Batch] = {}
        self._side: ErrorSide | None = None  # the error topics, their publisher and the redrive
        self._consumer: Any = None
        self._seq = 0
        self._stop = threading.Event()
        self._signals = 0
        self.assigned: set[tuple[str, int]] = set()
        self.started_at = time.time()
        self._holding = False  # partitions assigned and not on the way out
        self.draining = False
        self._stop_deadline = 0.0  # monotonic; set by a stop (_shutdown)
        self.held_bytes = 0  # bytes of packets consumed and not yet answered or acknowledged
        self._paused = False
        self._pressure_since = 0.0
        self.read_ahead = ReadAhead(p.max_buffer_bytes, self.persister.stuck_bytes)
        self.trimmer = Trimmer()  # gives large packets' memory back to the system once they are let go
        self.revoked = Revoked()  # partitions taken away during the current consume (kapow.pipeline.consume)
        self._committed: dict[tuple[str, int], int] = {}
        # batches librdkafka cannot decompress, stepped over (reported from the committed offset on, if inside one)
        self.unreadable = Unreadable(lambda: self._consumer, start=self._committed.get, paused=lambda: self._paused,
                                     errors_log=log)
        self._earliest = config.kafka.settings.get("auto.offset.reset", "earliest") in ("earliest", "smallest")
        self.last_commit = time.monotonic()

    @property
    def ready(self) -> bool:
        """Partitions held and error topics to fall back on (/readyz): both, since the topics are made beside
        the group join (kapow.pipeline.errorside)."""
        return self._holding and self.errors is not None

    @property
    def errors(self) -> ErrorPublisher | None:
        return self._side.publisher if self._side is not None else None

    @property
    def redriver(self) -> Any:
        return self._side.redriver if self._side is not None else None

    @property
    def totals(self) -> dict[str, int]:
        return self.observer.totals

    @property
    def destinations(self) -> DestinationsView:
        """Circuits and pools per (vanity, database), as the HTTP side reads them."""
        return DestinationsView(self.persister)

    # ------------------------------------------------------------------ lifecycle
    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_hangup)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1:  # the second signal: out now; uncommitted packets are replayed as no-ops
            os.write(2, b"kapow: second signal, exiting at once\n")
            os._exit(128 + signum)
        log.info("signal %s: finishing in-flight batches, then leaving", signal.Signals(signum).name)
        self.stop()

    def _on_hangup(self, _signum: int, _frame: FrameType | None) -> None:
        log.warning("SIGHUP ignored: the config is read at start only; restart the writer to apply a change")

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> bool:
        """Run until stopped; True when every in-flight batch was finished and committed on the way out."""
        self.open()
        try:
            while not self._stop.is_set():
                self.step()
        finally:
            drained = self.close()
        return drained

    def open(self) -> None:
        """Check the routes' tables, start preparing the error topics (kapow.pipeline.errorside), subscribe."""
        k = self.config.kafka
        for i, route in enumerate(self.sorter.router.routes.values()):
            problem = self.persister.check_route(route)
            if problem is not None:
                raise ConfigError(f"routes[{i}] ({route.key.label}): {problem}")
        if self._side is None:
            self._side = ErrorSide(self.config, self.clients, self.persister.healthy)
        consumer = self.clients.consumer()
        self._consumer = consumer
        topics = self.config.consumed_topics
        consumer.subscribe(topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)
        tune_gc()
        log.info("writer started", extra={"fields": {"topics": topics, "group": k.group_id}})

    def close(self) -> bool:
        """Finish what can be within the deadline, commit, leave the group; True when nothing was left behind."""
        return self._shutdown(self._consumer)

    def step(self) -> None:
        """One turn of the loop: consume, hand over, collect answers, publish, commit, observe."""
        assert self._side is not None
        errors = self._side.ready(wait=False)  # the redrive starts with it, even while nothing is consumed
        p = self.config.pipeline
        self._pressure()
        if self.read_ahead.full(self.held_bytes, paused=self._paused):
            self._collect(0.005)  # enough held for the lanes: wait for answers instead of reading more
        else:
            wait = p.batch_max_wait_ms / 1000 if not len(self.window) else 0.005
            self.revoked.clear()
            msgs = consume_bounded(self._consumer, self.sizer.target, wait, self.read_ahead.budget(self.held_bytes),
                                   self.revoked)
            if msgs:
                errors = self._side.ready(wait=True, stop=self._stop)  # no record is handled before they are
                if errors is None:  # stopping first: these records are not handled, so not committed either
                    return
                self._handle(msgs)
            if self.unreadable.searching:
                self.unreadable.tick()
                self._step_over()
            self._collect(0.0)
        if errors is not None:
            errors.poll(0)
        self._advance(asynchronous=True)
        self.trimmer.settle(idle=not len(self.window))  # large packets answered or released are free now
        self.observer.tick(self._refresh_gauges, errors.published if errors is not None else {})

    def _shutdown(self, consumer: Any) -> bool:
        self.draining = True
        self._holding = False  # /readyz turns 503 at once: no new work should be routed to a writer on its way out
        # the whole stop fits the deadline: leaving the group (CLOSE_TIMEOUT_S at most) comes out of it, not after
        # it (a hostile run measured 13.2 s against 10)
        end = time.monotonic() + self.config.pipeline.shutdown_deadline_s
        deadline = self._stop_deadline = end - min(CLOSE_TIMEOUT_S, self.config.pipeline.shutdown_deadline_s / 3)
        drained = self._drain(deadline)
        if not drained:
            log.warning("shutdown deadline reached with %d batches unfinished; they will be replayed",
                        len(self.window))
        self.persister.cancel(running=not drained)
        if self._side is not None and not self._side.close(CLOSE_TIMEOUT_S):
            drained = False  # an admin call still runs: the process must not finalize around it (os._exit)
        bounded(consumer.close, max(0.5, min(CLOSE_TIMEOUT_S, end - time.monotonic())),
                "consumer close")  # leaves the group: partitions move at once
        if self.errors is not None:
            self.errors.flush(max(0.5, min(CLOSE_TIMEOUT_S, deadline - time.monotonic())))
        self.persister.close(timeout=1.0 if drained else 0.0)
        log.info("writer stopped", extra={"fields": self.totals})
        return drained

    # ------------------------------------------------------------------ the steps
    def _handle(self, msgs: list[Any]) -> None:
        good = self.unreadable.split(msgs)
        if not good:
            return
        started = time.monotonic()
        self._seq += 1
        batch, works = self.sorter.sort(self._seq, good)
        metrics.STEP_DURATION.labels("sort", "-").observe(time.monotonic() - started)
        metrics.BATCH_SIZE.observe(len(good))
        self.window.add(batch)
        self._batches[batch.seq] = batch
        for record in batch.errors:
            self._publish(batch, record, at_sort=True)
        batch.errors = []
        rows = 0
        for work in works:
            batch.pending += 1
            batch.nbytes += work.nbytes
            self.held_bytes += work.nbytes
            rows += len(work.rows)
        self.sizer.observe(len(msgs), rows, len(works), batch.nbytes)
        if rows:  # read ahead by two units for the lanes and the next batch, of rows like these
            self.read_ahead.fit(batch.nbytes / rows, 2 * self.config.pipeline.unit_max_rows + self.sizer.target)
        self.persister.submit_all(works)
        metrics.IN_FLIGHT.set(len(self.window))

    def _step_over(self) -> None:
        """The records of an undecodable batch whose end was found: a batch of their error records."""
        p = self.config.pipeline
        room = (p.max_buffer_bytes - self.held_bytes) // PACKET_OVERHEAD  # error records are held until acked
        if self._paused or room <= 0 or len(self.window) >= MAX_WINDOW:
            return  # the memory bound holds for them too: reported once what is held is answered
        records = [ErrorRecord(msg, failure, None)
                   for msg, failure in self.unreadable.take(min(p.batch_max_messages, room))]
        if not records:
            return
        self._seq += 1
        batch = Batch(seq=self._seq, received=len(records), packets=len(records))
        for record in records:
            topic, partition = record.msg.topic() or "", record.msg.partition() or 0
            batch.offsets[(topic, partition)] = record.msg.offset() or 0  # in offset order
            batch.topics.setdefault(topic, TopicCounts()).passed += 1
        self.window.add(batch)
        self._batches[batch.seq] = batch
        for record in records:
            self._publish(batch, record, at_sort=True)
        metrics.IN_FLIGHT.set(len(self.window))

    def _publish(self, batch: Batch, record: ErrorRecord, *, at_sort: bool) -> None:
        assert self.errors is not None
        self.observer.failed(batch, record, at_sort=at_sort)
        size = record_bytes(record.msg)
        batch.unacked += 1
        batch.nbytes += size
        self.held_bytes += size

        def acked() -> None:
            batch.ack()
            batch.nbytes -= size
            self.trimmer.acked(size)
            if self._batches.get(batch.seq) is batch:  # not a batch dropped by a revoke meanwhile
                self.held_bytes -= size

        self.errors.publish(record, acked)

    def _collect(self, timeout: float) -> None:
        for result in self.persister.collect(timeout):
            self._answer(result)

    def _answer(self, result: WorkResult) -> None:
        batch = self._batches.get(result.work.batch)
        if batch is None:  # from before a revoke: its batch was dropped and will be consumed again
            return self.trimmer.answered(result)
        work = result.work
        batch.pending -= 1
        batch.nbytes -= work.nbytes
        self.held_bytes -= work.nbytes
        batch.landed += result.landed
        batch.duplicates += result.duplicates
        batch.probes += result.probes
        self.observer.answered(batch, result)
        for record in result.failed:
            self._publish(batch, record, at_sort=False)
        if len(batch.topics) > 1 or log.isEnabledFor(logging.DEBUG):
            batch.results.append(result)  # its packets go when the batch is released
        else:
            self.trimmer.answered(result)
            work.rows = []  # nothing reads them again: let the packets go now

    def _advance(self, *, asynchronous: bool) -> None:
        released, offsets = self.window.release()
        if not released:
            return
        self._commit(offsets, asynchronous=asynchronous)
        now_ms = time.time() * 1000
        for batch in released:
            self._batches.pop(batch.seq, None)
            self.observer.account(batch, now_ms)
            for result in batch.results:  # the packets it kept for accounting go now
                self.trimmer.answered(result)
            batch.results = []
        metrics.IN_FLIGHT.set(len(self.window))

    def _drain(self, deadline: float) -> bool:
        """Finish and commit every in-flight batch, or give up at ``deadline``; True when all are done."""
        if self.errors is None:  # nothing was handled yet: nothing is in flight
            return not len(self.window)
        while len(self.window):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._collect(min(0.05, left))
            self.errors.poll(0)
            self._advance(asynchronous=False)
        return True

    def _commit(self, offsets: dict[tuple[str, int], int], *, asynchronous: bool) -> None:
        if not offsets or self._consumer is None:
            return
        tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items() if (t, p) in self.assigned]
        if not tps:
            return
        try:
            self._consumer.commit(offsets=tps, asynchronous=asynchronous)
        except KafkaException as exc:  # e.g. a rebalance in progress: the next commit (or a replay) covers it
            log.warning("offset commit failed: %s", exc)
            return
        for tp in tps:
            self._committed[(tp.topic, tp.partition)] = tp.offset
        self.last_commit = time.monotonic()

    # ------------------------------------------------------------------ memory bound
    def _pressure(self) -> None:
        """Pause the consumer past the memory bound; park what is held if the pressure lasts."""
        p = self.config.pipeline
        now = time.monotonic()
        if not self._paused:
            if self.held_bytes > p.max_buffer_bytes or len(self.window) > MAX_WINDOW:
                self._set_paused(True)
                self._pressure_since = now
                log.warning("memory bound reached (%d bytes held, %d batches): consumption paused",
                            self.held_bytes, len(self.window))
        elif self.held_bytes < 0.8 * p.max_buffer_bytes and len(self.window) < MAX_WINDOW * 0.8:
            self._set_paused(False)
            log.info("consumption resumed (%d bytes held)", self.held_bytes)
        elif now - self._pressure_since > 1.0:  # paused, and not yet down to where it resumes: park what is held
            # (between 80 % and 100 % of the bound nothing used to be parked: a held table's packets kept the
            # consumer paused, and every other table waited, until the lock went or hold_s parked them)
            freed = self.persister.shed()
            self._pressure_since = now
            if freed:
                log.warning("parked %d bytes of held packets to relieve memory", freed)

    def _set_paused(self, paused: bool) -> None:
        self._paused = paused
        tps = [TopicPartition(t, p) for t, p in self.assigned]
        if not tps or self._consumer is None:
            return
        try:
            (self._consumer.pause if paused else self._consumer.resume)(tps)
        except KafkaException as exc:
            log.warning("consumer %s: %s", "pause" if paused else "resume", exc)

    # ------------------------------------------------------------------ health
    @property
    def commit_stalled_s(self) -> float:
        """Seconds the oldest uncommitted batch has waited (0 when nothing waits)."""
        head = self.window.head()
        return 0.0 if head is None else time.monotonic() - head.started

    def health(self) -> tuple[bool, str]:
        """(healthy?, why): unhealthy when commits have been stuck past every bound the pipeline sets itself."""
        p = self.config.pipeline
        limit = p.commit_stall_s or p.hold_s + 2 * p.shutdown_deadline_s + 60.0
        stalled = self.commit_stalled_s
        if stalled > limit:
            return False, f"no commit for {stalled:.0f} s (limit {limit:.0f} s): an error topic or the broker is stuck"
        return True, "ok"

    def _refresh_gauges(self) -> None:
        refresh_gauges(self.persister, self._consumer, self.assigned, self._committed, self.held_bytes)

    # ------------------------------------------------------------------ rebalance callbacks
    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self.assigned.update((tp.topic, tp.partition) for tp in partitions)
        self._paused = False
        starts = start_offsets(consumer, partitions)  # the lag gauge counts from there until we commit ourselves
        self._committed.update(((tp.topic, tp.partition), tp.offset) for tp in starts)
        if starts and self._earliest:
            assign_from(consumer, starts)  # at once, not by librdkafka's reset timer (kapow.kafka.offsets)
        metrics.ASSIGNED.set(len(self.assigned))
        self._holding = True
        names = sorted(f"{tp.topic}[{tp.partition}]" for tp in partitions)
        log.info("partitions assigned", extra={"fields": {"partitions": names}})

    def _on_revoke(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        """Finish and commit what can be within the deadline, while the partitions are still ours; drop the rest."""
        deadline = time.monotonic() + self.config.pipeline.shutdown_deadline_s
        if self.draining:  # the consumer's close during a stop: what the stop did not finish is not waited for again
            deadline = min(deadline, self._stop_deadline)
        drained = self._drain(deadline)
        if not drained:
            log.warning("revoke: %d batches unfinished; the next owner consumes them again", len(self.window))
        self._forget({(tp.topic, tp.partition) for tp in partitions}, "revoked", running=not drained)

    def _on_lost(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        """Lost (not revoked) partitions cannot be committed any more: drop everything in flight for them."""
        self._forget({(tp.topic, tp.partition) for tp in partitions}, "lost", running=True)

    def _forget(self, gone: set[tuple[str, int]], how: str, *, running: bool) -> None:
        self.revoked.add(gone)
        self.unreadable.forget(gone)
        dropped = self.persister.cancel(running=running)
        self.window.clear()
        self._batches.clear()
        self.held_bytes = 0
        self.assigned -= gone
        for tp in gone:
            self._committed.pop(tp, None)
            try:
                metrics.LAG.remove(tp[0], str(tp[1]))
            except KeyError:
                pass
        metrics.ASSIGNED.set(len(self.assigned))
        metrics.IN_FLIGHT.set(0)
        self._holding = bool(self.assigned)
        log.log(logging.WARNING if how == "lost" else logging.INFO, "partitions %s", how,
                extra={"fields": {"partitions": sorted(f"{t}[{p}]" for t, p in gone), "dropped_works": dropped}})

