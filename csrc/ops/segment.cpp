// Schemas of unsam::graph_segment and unsam::merge_graph (CPU backends in cpu/;
// both are host ops: the Python wrappers move their inputs to the CPU).
#include "ops/segment.h"

#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(unsam, m) {
  m.def("graph_segment(Tensor image, float[] ks, int min_size) -> Tensor");
  m.def(
      "merge_graph(Tensor hist, Tensor? feats, Tensor area, Tensor? boxes, Tensor edges, "
      "float w_hist, float w_feat, float w_size, float w_fill) -> (Tensor, Tensor)");
}
