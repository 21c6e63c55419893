"""The writer's HTTP side: Prometheus metrics, health, the dead-letter API and the web console.

It runs in a background thread of the writer process (:mod:`kapow.http.server`), beside the consumer loop, and
only reads what the loop already keeps (totals, the metrics registry, circuit states): it adds no work per packet.
"""
