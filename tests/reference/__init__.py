"""Slow Python references of unsam's ops, beside the tests that check the ops against them.

- :mod:`tests.reference.kernels` — the graph kernels (affinity, Fiedler vector, merging, FH, dendrograms);
- :mod:`tests.reference.maskops` — the mask stage's ops, and a backend for ``mask_stage(ops=...)``.
"""
