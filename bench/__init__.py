"""Benchmarks of the agent against peers on the same machine.

Each module is a standalone script (``python -m bench.<name>``) that prints
figures side by side; none of them is a pass/fail test. Shared helpers live
in :mod:`bench.common`, peer programs under :mod:`bench.peers`.
"""
