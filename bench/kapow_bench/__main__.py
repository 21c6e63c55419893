"""``python -m kapow_bench``: the benchmark (``make bench`` runs it with ``--all``)."""

from kapow_bench.cli import main

raise SystemExit(main())
