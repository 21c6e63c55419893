"""The peer alone, as before: ``python bench/peer/peer.py …`` is ``python -m kapow_bench.peer …``.

The peer's code is in ``bench/kapow_bench/peer/`` (installed with the ``bench`` extra); see README.md here.
"""

from kapow_bench.peer.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
