"""``python -m kapow_bench.peer``: the peer alone on a scratch database (bench/peer/README.md)."""

from kapow_bench.peer.cli import main

raise SystemExit(main())
