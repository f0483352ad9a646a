"""Slow Python references of unsam's ops, beside the tests that check the ops against them.

- :mod:`tests.reference.kernels` — the graph kernels (affinity, Fiedler vector, merging, FH, dendrograms);
- :mod:`tests.reference.maskops` — the mask stage's ops, and a backend for ``mask_stage(ops=...)``;
- :mod:`tests.reference.rlecrop` — the RLE crop ops (pycocotools' full decode, then numpy indexing);
- :mod:`tests.reference.train_data` — the training loader before the RLE crop ops (same samples).
"""
