// unsam::dense_crf — mean-field inference of a fully connected two-label CRF for
// many masks of one image at once (CutLER's MaskCut step 5, ALGORITHM.md §2.5).
//
// dense_crf(image [H, W, 3] uint8, masks [K, H, W] bool or float32 in [0, 1],
//           gaussian_sxy, gaussian_compat, bilateral_sxy, bilateral_srgb, bilateral_compat,
//           iterations, logits) -> [K, H, W] bool (MAP), or float32 log(Q_fg / Q_bg) when logits
//
//   The CRF of Krähenbühl & Koltun (NIPS 2011) as their densecrf library (pydensecrf)
//   runs it with CutLER's settings (maskcut/crf.py), one independent CRF per mask:
//   - unary: logits (1 - m, m) of the mask, softmax, -log (clipped at 1e-5);
//   - two Gaussian kernels, Potts compatibility (same label attracts with weight compat):
//     appearance-free  exp(-|p_i - p_j|^2 / (2 gaussian_sxy^2)) and
//     bilateral        exp(-|p_i - p_j|^2 / (2 bilateral_sxy^2) - |I_i - I_j|^2 / (2 bilateral_srgb^2)),
//     p in pixels (x right, y down), I the RGB levels 0-255, the pixel itself included;
//     each symmetrically normalised, D^-1/2 K D^-1/2 with D = K 1;
//   - `iterations` parallel mean-field updates from the unary's softmax;
//   - MAP: foreground where Q_fg > Q_bg (ties: background, argmax's first label).
//   The kernels are applied by a permutohedral lattice (Adams, Baek & Davis,
//   Eurographics 2010) with the library's arithmetic: splat in raster order, one blur
//   pass per lattice axis, slice scaled by 1 / (1 + 2^-d). Each lattice is built once per
//   call and every mask is filtered through it; masks are carried as one channel each
//   (the foreground's: filtering is linear, so the background's filtered field is the
//   filtered constant minus the foreground's), many masks side by side per vertex.
//   Host op: the CUDA entry (densecrf.cpp) says so; the Python wrapper
//   (unsam/kernels/densecrf.py) moves CUDA tensors to the CPU.
#pragma once

#include <ATen/core/Tensor.h>

#include "ops/common.h"

namespace unsam::ops {

at::Tensor dense_crf_cpu(const at::Tensor& image, const at::Tensor& masks, double gaussian_sxy,
                         double gaussian_compat, double bilateral_sxy, double bilateral_srgb,
                         double bilateral_compat, int64_t iterations, bool logits);

// Argument checks shared by the backends (names the argument, what came).
void check_dense_crf_args(const at::Tensor& image, const at::Tensor& masks, double gaussian_sxy,
                          double gaussian_compat, double bilateral_sxy, double bilateral_srgb,
                          double bilateral_compat, int64_t iterations);

}  // namespace unsam::ops
