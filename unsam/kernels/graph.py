"""Device-agnostic tensor helpers on bit-packed graphs (rows of int32 words).

These complement the compiled ops: MaskCut's "zero the features of covered
patches" becomes clearing rows and columns of the bit graph (no new GEMM), and
a region's own graph is cut out of the image's graph by row/column selection.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["popcount_rows", "mask_graph", "subgraph", "pack_bits", "degrees"]

_POP8 = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int32)


def popcount_rows(bits: torch.Tensor) -> torch.Tensor:
    """Number of set bits per row: [..., N, W] int32 -> [..., N] int64."""
    if bits.device.type == "cpu":
        a = bits.contiguous().numpy().view(np.uint32)
        return torch.from_numpy(np.bitwise_count(a).sum(-1, dtype=np.int64))
    table = _POP8.to(bits.device)
    by = bits.contiguous().view(torch.uint8)
    return table[by.long()].sum(-1)


def degrees(bits: torch.Tensor, eps: float) -> torch.Tensor:
    """Degrees of the exact graph A = (1 - eps) B + eps 1 1^T: [..., N] float64."""
    n = bits.shape[-2]
    return popcount_rows(bits).double() * (1.0 - eps) + eps * n


def pack_bits(dense: torch.Tensor) -> torch.Tensor:
    """Bool [..., R, N] -> packed [..., R, ceil(N/32)] int32 (bit j % 32 of word j // 32)."""
    n = dense.shape[-1]
    w = (n + 31) // 32
    if dense.device.type == "cpu":  # numpy's packbits is a C loop; the torch path makes int64 temporaries
        a = dense.contiguous().numpy().astype(bool, copy=False)
        packed = np.packbits(a, axis=-1, bitorder="little")
        pad_bytes = w * 4 - packed.shape[-1]
        if pad_bytes:
            packed = np.concatenate([packed, np.zeros(packed.shape[:-1] + (pad_bytes,), np.uint8)], -1)
        return torch.from_numpy(np.ascontiguousarray(packed).view(np.int32))
    pad = w * 32 - n
    if pad:
        dense = torch.nn.functional.pad(dense, (0, pad))
    d = dense.reshape(*dense.shape[:-1], w, 32).to(torch.int64)
    shifts = torch.arange(32, device=dense.device, dtype=torch.int64)
    words = (d << shifts).sum(-1)
    # Two's complement wrap into int32 (bit 31 becomes the sign bit).
    words = torch.where(words >= 2**31, words - 2**32, words)
    return words.to(torch.int32)


def _packed_mask(keep: torch.Tensor) -> torch.Tensor:
    return pack_bits(keep.unsqueeze(-2)).squeeze(-2)


def mask_graph(bits: torch.Tensor, keep: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero rows and columns of patches with keep == False (MaskCut's zeroed features).

    bits [..., N, W], keep [..., N] bool -> (bits [..., N, W], deg [..., N] float64).
    """
    cols = _packed_mask(keep)  # [..., W]
    out = bits & cols.unsqueeze(-2)
    out = out * keep.unsqueeze(-1).to(out.dtype)
    return out, degrees(out, eps)


def subgraph(bits: torch.Tensor, index: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The graph induced on the nodes `index` (one graph): bits [N, W] -> ([n, w], deg [n])."""
    n = bits.shape[-2]
    rows = bits.index_select(0, index)
    if bits.device.type == "cpu":
        dense = np.unpackbits(rows.contiguous().numpy().view(np.uint8), axis=-1, count=n, bitorder="little")
        sub = pack_bits(torch.from_numpy(dense[:, index.numpy()].astype(bool)))
        return sub, degrees(sub, eps)
    shifts = torch.arange(32, device=bits.device, dtype=torch.int32)
    dense = ((rows.unsqueeze(-1) >> shifts) & 1).flatten(-2)[:, :n].bool()
    sub = pack_bits(dense.index_select(1, index))
    return sub, degrees(sub, eps)
