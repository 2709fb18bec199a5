"""Test oracles: slow, obviously-correct implementations of the cleaning rules (`clean`)
and of the routing rules (`rules`), one reading or one event at a time in plain Python.

The vectorised `pipeline.core.clean.Cleaner` and `pipeline.core.rules.router.Router` are
compared against them in the tests, and measured against them by the benchmarks in
scripts/benchmarks/. They live here, not in `pipeline`, so they do not ship with the
installed package; nothing in `pipeline` may import them.
"""
