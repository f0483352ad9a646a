"""Kernel benchmarks: the published way beside ours, same process, ratios reported.

Run: ``pytest benchmarks/ --benchmark -s`` (results also go to benchmarks/results/<card>.json).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse
import scipy.sparse.linalg
import torch

from benchmarks._util import bench, image_patch_feats, record
from unsam.kernels import (
    affinity,
    cuda_available,
    fix_sign,
    lanczos_fiedler,
    merge_levels,
    merge_levels_reference,
    unpack_bits,
)

pytestmark = pytest.mark.benchmark
TAU, EPS = 0.15, 1e-5


def dense_generalized_fiedler(a: np.ndarray) -> np.ndarray:
    """The published solver: scipy.linalg.eigh(D - A, D, subset_by_index=[1, 2])."""
    d = np.diag(a.sum(1))
    _, vecs = scipy.linalg.eigh(d - a, d, subset_by_index=[1, 2])
    return fix_sign(vecs[:, 0])  # the same sign convention as ours, so the cuts are comparable


def eigsh_fiedler(bits: torch.Tensor, deg: torch.Tensor) -> np.ndarray:
    """scipy's ARPACK on the same exact graph: deflated standard form, sparse bit matrix + rank one."""
    n = deg.shape[0]
    b = scipy.sparse.csr_matrix(unpack_bits(bits, n).numpy().astype(np.float64))
    d = deg.numpy()
    dinv = 1.0 / np.sqrt(d)
    u = np.sqrt(d) / np.linalg.norm(np.sqrt(d))

    def mv(v):
        v = np.ravel(v)
        t = dinv * v
        y = dinv * ((1 - EPS) * (b @ t) + EPS * t.sum())
        return y - u * (u @ y) - u * (u @ v)  # deflate the top eigenpair (1, u)

    op = scipy.sparse.linalg.LinearOperator((n, n), matvec=mv, dtype=np.float64)
    _, vecs = scipy.sparse.linalg.eigsh(op, k=1, which="LA", tol=1e-6, v0=np.ones(n) - u * u.sum())
    return dinv * vecs[:, 0]


def _cos(a, b):
    return abs(float(np.dot(a, b))) / (np.linalg.norm(a) * np.linalg.norm(b))


def test_fiedler_n3600_vs_dense_and_eigsh():
    rows = []
    for idx in range(2):
        f = image_patch_feats(480, 8, index=idx)
        bits, deg = affinity(f, TAU, EPS)
        a = ((1 - EPS) * unpack_bits(bits, f.shape[0]).double() + EPS).numpy()
        t_dense = bench(lambda: dense_generalized_fiedler(a), repeat=1, warmup=0)
        t_eigsh = bench(lambda: eigsh_fiedler(bits, deg), repeat=3, warmup=0)
        t_ours = bench(lambda: lanczos_fiedler(bits, deg), repeat=7, warmup=1)
        x, _, it = lanczos_fiedler(bits, deg)
        cos = _cos(x.numpy(), dense_generalized_fiedler(a))
        rows.append(
            dict(image=idx, N=3600, dense_s=t_dense, eigsh_s=t_eigsh, ours_s=t_ours, iters=int(it),
                 x_vs_dense=t_dense / t_ours, x_vs_eigsh=t_eigsh / t_ours, cos_vs_dense=cos)
        )
    record("fiedler_n3600", rows)
    for r in rows:
        assert r["cos_vs_dense"] > 0.999
        assert r["x_vs_dense"] >= 100, r
        assert r["x_vs_eigsh"] > 1.0, r


def _published_three_cuts(f: torch.Tensor) -> list[np.ndarray]:
    """MaskCut's way: dense affinity from zeroed features, a dense solve per cut."""
    fn = torch.nn.functional.normalize(f, dim=-1).numpy().astype(np.float32)
    masks = []
    for _ in range(3):
        a = fn @ fn.T
        a = np.where(a > TAU, 1.0, EPS)
        x = dense_generalized_fiedler(a)
        fg = x > x.mean()
        masks.append(fg)
        fn = fn * ~fg[:, None]
    return masks


def _our_three_cuts(f: torch.Tensor) -> list[np.ndarray]:
    valid = torch.ones(f.shape[0], dtype=torch.bool)
    masks, x = [], None
    for _ in range(3):
        bits, deg = affinity(f, TAU, EPS, valid=valid)
        x, _, _ = lanczos_fiedler(bits, deg, EPS, x0=x)
        fg = (x > x.mean()).numpy()
        masks.append(fg)
        valid = valid & ~torch.from_numpy(fg)
    return masks


def test_three_maskcut_cuts_with_affinity():
    f = image_patch_feats(480, 8, index=1)
    t_pub = bench(lambda: _published_three_cuts(f), repeat=1, warmup=0)
    t_ours = bench(lambda: _our_three_cuts(f), repeat=5, warmup=1)
    pub, ours = _published_three_cuts(f), _our_three_cuts(f)
    agree = [max((p == o).mean(), (p != o).mean()) for p, o in zip(pub, ours)]
    row = dict(N=3600, published_s=t_pub, ours_s=t_ours, speedup=t_pub / t_ours, cut_agreement=min(agree))
    record("three_cuts_n3600", [row])
    assert row["speedup"] >= 20, row
    assert row["cut_agreement"] > 0.99, row


def test_merge_32x32_vs_python_reference():
    g = torch.Generator().manual_seed(0)
    k, c = 6, 768
    centers = torch.randn(k, c, generator=g)
    lab = torch.randint(0, k, (9, 9), generator=g).repeat_interleave(4, 0).repeat_interleave(4, 1)[:32, :32]
    f = centers[lab] + 0.8 * torch.randn(32, 32, c, generator=g)
    t_ref = bench(lambda: merge_levels_reference(f), repeat=1, warmup=0)
    t_one = bench(lambda: merge_levels(f), repeat=9, warmup=1)
    assert torch.equal(merge_levels(f), merge_levels_reference(f))
    batch = f[None].repeat(64, 1, 1, 1) + 0.05 * torch.randn(64, 32, 32, c, generator=g)
    t_batch = bench(lambda: merge_levels(batch), repeat=3, warmup=1)
    row = dict(H=32, W=32, C=c, reference_s=t_ref, ours_s=t_one, speedup=t_ref / t_one,
               regions_per_s_batched=64 / t_batch, threads=torch.get_num_threads())
    record("merge_32x32", [row])
    assert row["speedup"] >= 100, row


def _bsds_image(index: int = 0) -> np.ndarray:
    from benchmarks._util import DATA

    files = sorted((DATA / "bsds500" / "images" / "val").glob("*.jpg"))
    if not files:
        pytest.skip("../shared/data/bsds500 is absent")
    from PIL import Image

    return np.asarray(Image.open(files[index]).convert("RGB"))


def test_atoms_graph_segment_vs_skimage_and_merge_graph_vs_reference():
    """Atoms at the label defaults' 4 scales vs scikit-image's FH called once per scale
    (the FH baseline's way), and the dendrogram kernel vs its Python edge scan."""
    skimage_seg = pytest.importorskip("skimage.segmentation")
    from scipy import ndimage

    from unsam.atoms import AtomConfig, colour_histograms
    from unsam.kernels.segment import adjacent_pairs, graph_segment, merge_graph, merge_graph_reference

    img = _bsds_image(0)
    scales = list(AtomConfig().scales)
    t_sk = bench(lambda: [skimage_seg.felzenszwalb(img, scale=k, sigma=0.8, min_size=20) for k in scales], repeat=3)
    t_ours = bench(lambda: graph_segment(img, scales, 20, 0.8), repeat=5)
    ours = graph_segment(img, scales, 20, 0.8).numpy()
    counts = [int(x.max()) + 1 for x in ours]
    sk = [skimage_seg.felzenszwalb(img, scale=k, sigma=0.8, min_size=20) for k in scales]
    # Coarser atoms: the k=800 partition, small enough for the Python reference.
    atoms = ours[-1]
    n = counts[-1]
    hist = colour_histograms(img, atoms, n, 25)
    area = np.bincount(atoms.ravel(), minlength=n).astype(np.float64)
    boxes = np.array([(q[1].start, q[0].start, q[1].stop, q[0].stop) for q in ndimage.find_objects(atoms + 1)])
    edges = adjacent_pairs(atoms)
    args = (torch.from_numpy(hist), torch.from_numpy(area), torch.from_numpy(edges), None, torch.from_numpy(boxes))
    t_ref = bench(lambda: merge_graph_reference(hist, area, edges, None, boxes, 1.0, 0.0, 0.5, 0.5), repeat=1, warmup=0)
    t_merge = bench(lambda: merge_graph(*args, 1.0, 0.0, 0.5, 0.5), repeat=9)
    m, _ = merge_graph(*args, 1.0, 0.0, 0.5, 0.5)
    mr, _ = merge_graph_reference(hist, area, edges, None, boxes, 1.0, 0.0, 0.5, 0.5)
    row = dict(
        image=f"{img.shape[1]}x{img.shape[0]}", scales=len(scales), skimage_s=t_sk, ours_s=t_ours,
        segment_speedup=t_sk / t_ours, atoms=str(counts), same_labels_as_skimage=all(np.array_equal(a, b) for a, b in zip(ours, sk)),
        merge_nodes=n, merge_reference_s=t_ref, merge_ours_s=t_merge, merge_speedup=t_ref / t_merge,
    )
    record("atoms", [row])
    assert np.array_equal(m.numpy(), mr)
    # Same algorithm, same settings: the very same labels as scikit-image.
    assert all(np.array_equal(a, b) for a, b in zip(ours, sk)), row
    assert row["segment_speedup"] >= 1.5, row
    assert row["merge_speedup"] >= 50, row


def test_n10000_time_and_memory():
    """Where the dense solver needs minutes (and 3 x 800 MB): ours, with peak memory measured
    in a fresh process; the dense time is measured at N = 3600 and scaled by N^3."""
    root = str(__import__("pathlib").Path(__file__).resolve().parents[1])
    # Peak memory in a fresh process: a thread samples the resident set while the
    # ops run (they release the GIL), relative to the resident set just before.
    code = textwrap.dedent(
        """
        import json, os, sys, threading, time
        sys.path.insert(0, %r)
        from benchmarks._util import image_patch_feats
        from unsam.kernels import affinity, lanczos_fiedler
        def rss():
            return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        f = image_patch_feats(800, 8, index=2)
        samples, done = [], threading.Event()
        def poll():
            while not done.is_set():
                samples.append(rss()); time.sleep(0.0005)
        base = rss(); th = threading.Thread(target=poll); th.start()
        t0 = time.perf_counter(); bits, deg = affinity(f); t1 = time.perf_counter()
        x, lam, it = lanczos_fiedler(bits, deg); t2 = time.perf_counter()
        done.set(); th.join()
        print(json.dumps(dict(N=f.shape[0], affinity_s=t1 - t0, lanczos_s=t2 - t1, iters=int(it),
                              bits_mb=bits.numel() * 4 / 2**20, peak_extra_mb=max(samples + [rss()]) - base)))
        """
    ) % (root,)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    f = image_patch_feats(480, 8, index=2)
    bits, deg = affinity(f)
    a = ((1 - EPS) * unpack_bits(bits, 3600).double() + EPS).numpy()
    t3600 = bench(lambda: dense_generalized_fiedler(a), repeat=1, warmup=0)
    row["dense_s_extrapolated"] = t3600 * (row["N"] / 3600) ** 3
    row["dense_graph_mb"] = row["N"] ** 2 * 8 / 2**20
    row["speedup_vs_dense_extrapolated"] = row["dense_s_extrapolated"] / (row["affinity_s"] + row["lanczos_s"])
    record("n10000", [row])
    assert row["peak_extra_mb"] < row["dense_graph_mb"]


@pytest.mark.cuda
@pytest.mark.skipif(not cuda_available(), reason="needs a GPU and a CUDA build")
def test_gpu_fiedler_throughput_n3600():
    rows = []
    f = torch.stack([image_patch_feats(480, 8, index=i) for i in range(8)]).cuda()
    for batch in (8, 64, 256):
        fb = f.repeat(batch // 8, 1, 1)
        fb = fb + 0.01 * torch.randn_like(fb)
        bits, deg = affinity(fb)
        t_aff = bench(lambda: affinity(fb), repeat=5, device="cuda")
        t_l = bench(lambda: lanczos_fiedler(bits, deg), repeat=5, device="cuda")
        _, _, it = lanczos_fiedler(bits, deg)
        rows.append(dict(batch=batch, N=3600, affinity_s=t_aff, lanczos_s=t_l, mean_iters=float(it.float().mean()),
                         solves_per_s=batch / t_l, images_per_s_incl_affinity=batch / (t_l + t_aff)))
    # CPU baseline in the same process: our own CPU kernel, one graph.
    bc, dc = affinity(f[0].cpu())
    t_cpu = bench(lambda: lanczos_fiedler(bc, dc), repeat=3)
    for r in rows:
        r["x_vs_cpu_kernel"] = r["solves_per_s"] * t_cpu
    record("gpu_fiedler_n3600", rows)
    assert max(r["solves_per_s"] for r in rows) >= 1000, rows


@pytest.mark.cuda
@pytest.mark.skipif(not cuda_available(), reason="needs a GPU and a CUDA build")
def test_gpu_merge_throughput():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(6, 768, generator=g)
    lab = torch.randint(0, 6, (9, 9), generator=g).repeat_interleave(4, 0).repeat_interleave(4, 1)[:32, :32]
    base = centers[lab]
    rows = []
    f_cpu = base[None] + 0.8 * torch.randn(16, 32, 32, 768, generator=g)
    t_cpu = bench(lambda: merge_levels(f_cpu), repeat=3)
    for batch in (256, 2048):
        f = (base[None] + 0.8 * torch.randn(batch, 32, 32, 768, generator=g)).cuda()
        t = bench(lambda: merge_levels(f), repeat=3, device="cuda")
        rows.append(dict(batch=batch, regions_per_s=batch / t, cpu_regions_per_s=16 / t_cpu,
                         x_vs_cpu_kernel=(batch / t) / (16 / t_cpu)))
    assert torch.equal(merge_levels(f[:16]).cpu(), merge_levels(f[:16].cpu()))
    record("gpu_merge_32x32", rows)
    assert max(r["regions_per_s"] for r in rows) >= 10_000, rows
