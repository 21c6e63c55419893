"""KaPoW's benchmark (``make bench``, ``kapow bench``, ``python -m kapow_bench``): every workload the targets are
written in, against the COPY ceiling, the peer and the seed's design, on the real broker and database.

It lives beside the runtime package, not in it: the writer never imports it, and it may import the writer's public
pieces (``kapow.client``, ``kapow.kafka.clients``, ``kapow.errors``) but nothing imports it back. Its modules, in
the order a run meets them: :mod:`.spec` (what a workload is), :mod:`.workload` and :mod:`.shapes` (its records
and tables), :mod:`.scratch` (the throwaway world), :mod:`.runs` (one landing, the ceiling), :mod:`.cpu` (CPU per
packet), :mod:`.tables` and :mod:`.writer` (the database's clock, when the writer is done), :mod:`.peer_side` and
:mod:`.peer` (Kafka Connect), :mod:`.latency`, :mod:`.seed`, :mod:`.suite` (what ``--all`` runs), :mod:`.report`
and :mod:`.plot`. ``tests/perf`` uses the same pieces for the regression guard of ``make test``.
"""
