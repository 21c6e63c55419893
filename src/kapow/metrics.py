"""Every metric KaPoW exports, declared once (RED: rate, errors, duration), each with its kind.

Metrics are updated once per batch with counts, never once per packet: the hot path stays free of them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

# no *_created series: they double the exposition and nothing here reads them
disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SIZE_BUCKETS = (1, 10, 50, 100, 500, 1000, 2000, 5000, 10000, 20000)

# counter: records by topic, pipeline step and outcome (filter: passed|filtered; sort: user_error|system_error;
# persist: landed|duplicate|user_error|system_error); a packet with several destinations counts once per
# destination in persist
PACKETS = Counter("kapow_packets", "Records handled, by topic, step and outcome",
                  ["topic", "step", "outcome"], registry=REGISTRY)
# counter: rows written per destination database, by outcome (landed|duplicate)
ROWS = Counter("kapow_rows", "Rows per destination database and outcome",
               ["database", "outcome"], registry=REGISTRY)
# counter: failed packets per destination database (or "-" before routing), error class and code
ERRORS = Counter("kapow_errors", "Failed packets by destination database, class and code",
                 ["database", "class", "code"], registry=REGISTRY)
# counter: error records acknowledged on each error topic (from the publisher's counts, once a second)
ERROR_RECORDS = Counter("kapow_error_records", "Error records acknowledged per error topic",
                        ["topic"], registry=REGISTRY)
# histogram: time spent per step and destination database ("-" for steps before routing)
STEP_DURATION = Histogram("kapow_step_duration_seconds", "Duration of one step for one batch",
                          ["step", "database"], buckets=_DURATION_BUCKETS, registry=REGISTRY)
# histogram: records per consumed batch
BATCH_SIZE = Histogram("kapow_batch_size", "Records per consumed batch", buckets=_SIZE_BUCKETS,
                       registry=REGISTRY)
# histogram: record timestamp to offset commit, sampled at the first and last record of each batch
END_TO_END = Histogram("kapow_end_to_end_latency_seconds", "Record timestamp to commit",
                       buckets=_LATENCY_BUCKETS, registry=REGISTRY)
# gauge: consumer lag per assigned partition: high watermark - the consumer's position (the committed offset
# until this process has consumed from the partition); refreshed once a second from the loop
LAG = Gauge("kapow_consumer_lag", "Consumer lag in records", ["topic", "partition"], registry=REGISTRY)
# gauge: connections lent out per destination (vanity, database); refreshed once a second
POOL_IN_USE = Gauge("kapow_pool_connections_in_use", "Connections in use", ["vanity", "database"],
                    registry=REGISTRY)
# gauge: the pool's bound (max_connections) per destination (vanity, database)
POOL_MAX = Gauge("kapow_pool_connections_max", "Connections allowed (max_connections)", ["vanity", "database"],
                 registry=REGISTRY)
# gauge: circuit state per destination (0 closed, 1 half-open, 2 open: kapow.pipeline.circuit.CircuitState);
# refreshed once a second, and probed on a timer while open, so it clears without traffic
CIRCUIT = Gauge("kapow_circuit_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open",
                ["vanity", "database"], registry=REGISTRY)
# gauge: batches consumed but not yet committed
IN_FLIGHT = Gauge("kapow_batches_in_flight", "Batches consumed, not yet committed", registry=REGISTRY)
# gauge: partitions assigned to this process
ASSIGNED = Gauge("kapow_partitions_assigned", "Partitions assigned to this process", registry=REGISTRY)
# gauge: unix time of the consumer loop's latest turn (set once a second); a stalled loop stops moving it
LOOP_HEARTBEAT = Gauge("kapow_loop_heartbeat_timestamp_seconds", "Unix time of the consumer loop's latest turn",
                       registry=REGISTRY)

# gauge: bytes of packets consumed and not yet landed or parked; past pipeline.max_buffer_bytes the consumer pauses
BUFFER_BYTES = Gauge("kapow_buffer_bytes", "Bytes of packets consumed and not yet landed or parked",
                     registry=REGISTRY)
# gauge: works waiting per table state (held: a table failing; queued: waiting for a worker), per destination
TABLES_HELD = Gauge("kapow_tables_held", "Tables held by a failure (lock, timeout) per destination",
                    ["vanity", "database"], registry=REGISTRY)
# counter: parked packets republished by the automatic redrive, by outcome (redriven|skipped|gave_up)
REDRIVE = Counter("kapow_redrive", "Parked packets handled by the automatic redrive, by outcome",
                  ["outcome"], registry=REGISTRY)
# counter: DLQ reschedules and purges done through the HTTP API, by action (reschedule|purge) and the name of the
# token that asked (kapow.http.security; "anonymous" on an open loopback API): who changed the queue, how often
API_MUTATIONS = Counter("kapow_api_mutations", "DLQ reschedules and purges through the HTTP API, by action and token",
                        ["action", "token"], registry=REGISTRY)
