"""Fuzzing the mask stage: random candidate sets, every promise kept, nothing hangs.

10 000 random inputs (``tests/fuzzing.py``: nested, overlapping, identical, empty, 1-pixel
and image-sized masks, tied scores, stage-tree links to kept, dropped, missing and cyclic
keys, partition ladders), each with a random stage configuration (every level rule, clipping,
``max_masks``), through :func:`unsam.label.masks.mask_stage`: it must end, and its records
must be valid label JSON whose parents form a forest, each parent holding at least
``contain`` of its child and lying at a coarser level. The fuzz benchmark
(``benchmarks/test_fuzz_bench.py``) runs 100 000.
"""

from __future__ import annotations

import signal

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzzing import candidates, check_annotations, mask_config
from unsam.label.items import MaskItem
from unsam.label.masks import MaskConfig, mask_stage

N_CASES = 10_000


@pytest.fixture
def deadline():
    """A case that hangs fails the test (SIGALRM) instead of hanging the suite."""

    def on_alarm(signum, frame):
        raise TimeoutError("the mask stage did not end")

    old = signal.signal(signal.SIGALRM, on_alarm)
    yield lambda s: signal.alarm(s)
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def run_case(seed: int) -> int:
    rng = np.random.default_rng(seed)
    items, image, hw = candidates(rng)
    cfg = mask_config(rng)
    anns = mask_stage(items, image, hw, cfg)
    check_annotations(anns, *hw, cfg)
    return len(anns)


def test_mask_stage_fuzz(deadline):
    written = 0
    for seed in range(N_CASES):
        deadline(30)
        try:
            written += run_case(seed)
        except AssertionError as e:
            raise AssertionError(f"seed {seed}: {e}") from None
    assert written > N_CASES  # the cases were not all empty


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), h=st.integers(1, 24), w=st.integers(1, 24), k=st.integers(0, 30))
def test_mask_stage_properties(seed, h, w, k):
    rng = np.random.default_rng(seed)
    items, image, hw = candidates(rng, h, w, k)
    cfg = mask_config(rng)
    check_annotations(mask_stage(items, image, hw, cfg), *hw, cfg)


def _box(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_a_tree_parent_and_a_container_cannot_close_a_cycle(deadline):
    """A's stage parent is B (holding 90 % of A), B's is C (holding none of it), so B falls
    back to its smallest larger container: A. Both links stand on their own; together they
    closed a cycle, and the levels walked it forever. Now the larger mask of the cycle takes
    its container instead."""
    h = w = 40
    a = _box(h, w, 0, 10, 0, 10)  # 100 px
    b = _box(h, w, 1, 10, 0, 10)
    b[10, 0:9] = True  # 99 px, 90 of them inside a
    c = _box(h, w, 30, 35, 30, 35)
    items = [
        MaskItem((0, 0, w, h), a, 0.5, "conquer", {"key": "A", "up": "B"}).tighten(),
        MaskItem((0, 0, w, h), b, 0.5, "conquer", {"key": "B", "up": "C"}).tighten(),
        MaskItem((0, 0, w, h), c, 0.5, "conquer", {"key": "C"}).tighten(),
    ]
    cfg = MaskConfig(levels="tree", min_area=1, min_area_frac=0.0)
    deadline(20)
    anns = mask_stage(items, np.zeros((h, w, 3), np.uint8), (h, w), cfg)
    check_annotations(anns, h, w, cfg)
    by_area = {a["area"]: a for a in anns}
    assert by_area[100]["parent_id"] is None and by_area[99]["parent_id"] == by_area[100]["id"]
    assert by_area[99]["level"] == 1


def test_stage_tree_links_that_cycle_among_dropped_masks_end(deadline):
    """Keys whose "up" links cycle through masks that were dropped (too small): the climb to
    the nearest kept ancestor ends."""
    h = w = 20
    big = MaskItem((0, 0, w, h), _box(h, w, 0, 20, 0, 20), 0.5, "conquer", {"key": "K", "up": "X"})
    tiny_x = MaskItem((0, 0, 1, 1), np.ones((1, 1), bool), 0.5, "conquer", {"key": "X", "up": "Y"})
    tiny_y = MaskItem((2, 2, 3, 3), np.ones((1, 1), bool), 0.5, "conquer", {"key": "Y", "up": "X"})
    cfg = MaskConfig(levels="tree", min_area=4, min_area_frac=0.0)
    deadline(20)
    anns = mask_stage([big, tiny_x, tiny_y], np.zeros((h, w, 3), np.uint8), (h, w), cfg)
    assert [(a["area"], a["parent_id"], a["level"]) for a in anns] == [(400, None, 0)]
