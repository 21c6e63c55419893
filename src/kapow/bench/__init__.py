"""``kapow bench``: measure KaPoW against its targets (PRODUCT.md §8), its peer and its baselines.

The benchmark lives inside the package (not in a loose script) so that ``make bench`` and the CI smoke test run
exactly the code a user runs, against the real broker and database, with fresh topics and databases each run.
"""
