// pybind11 bindings of the AMWC/MWC solvers: `detectron2_cops._C`.
//
// The one validation pass of the native solvers, for every caller (the Python API in
// detectron2_cops/solvers passes its arguments through unchanged): these bindings check what
// only they can see, the arrays' shapes and dtypes (refusing dtypes that a forced conversion
// would change, see require_kind) and the int32 range of what they narrow; the solver core
// (cops::validate_instance, check_relabelling and with_perturbation in graph.cpp) checks the
// values (finite costs within the bound, node ids, self-loops, class ids, the perturbation
// scale) on the solving thread. So no input can make the native code read out of bounds or
// solve something else than given. The GIL is released while solving.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <string>
#include <utility>

#include "amwc.h"

namespace py = pybind11;

namespace {

using DArray = py::array_t<double, py::array::c_style | py::array::forcecast>;
using FArray = py::array_t<float, py::array::c_style>;
using IArray = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
using BArray = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;

// Costs: a C-contiguous float32 array (read as it is, widened inside the solver) or float64 one.
struct Costs {
  py::array array;
  bool is_f32 = false;
  py::ssize_t ndim() const { return array.ndim(); }
  py::ssize_t shape(int i) const { return array.shape(i); }
  const float* f32() const { return static_cast<const float*>(array.data()); }
  const double* f64() const { return static_cast<const double*>(array.data()); }
};

struct HeldInstance {
  Costs node_costs;
  IArray edges;
  Costs edge_costs;
  BArray partitionable;
  cops::InstanceView view;
  std::vector<int32_t> initial_labels, initial_clusters;  // warm start (empty: none)
  Costs node_delta;  // node-cost perturbation (see hold_perturbation)
  std::vector<int64_t> label_classes;  // relabelled perturbation (see hold_perturbation), a copy
};

[[noreturn]] void fail(const std::string& msg) { throw py::value_error(msg); }

// ", got [d0, d1, ...]": the shape of `a`, for messages.
std::string got_shape(const py::array& a) {
  std::string s = ", got [";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + "]";
}

// `obj` (an array, or what NumPy makes of a list or scalar) as an array; refused unless its dtype
// kind is one of `kinds` ('f' float, 'i' / 'u' integer, 'b' bool): the forcecast conversions
// below would otherwise truncate floats to integers, drop imaginary parts, parse strings or wrap
// integers without an error. Empty arrays pass (nothing is converted).
py::array require_kind(py::handle obj, const char* kinds, const std::string& what, const char* want = nullptr) {
  py::array a = py::array::ensure(obj);
  if (!a) {
    PyErr_Clear();
    fail(what + " must be convertible to a numeric array");
  }
  const char kind = a.dtype().kind();
  if (a.size() > 0 && std::strchr(kinds, kind) == nullptr) {
    if (want == nullptr) want = std::strchr(kinds, 'f') != nullptr ? "a real (float or integer)" : "an integer";
    fail(what + " must be " + want + " array, got dtype " + std::string(py::str(a.dtype())));
  }
  return a;
}

// float32 stays float32 (a C-contiguous copy only when it is strided, e.g. a column subset),
// float64 stays float64; any other dtype is refused.
Costs hold_costs(py::handle obj, const std::string& where, const char* name) {
  py::array a = py::array::ensure(obj);
  if (!a) {
    PyErr_Clear();
    fail(where + name + " must be a float32 or float64 array");
  }
  const py::dtype dt = a.dtype();
  if (dt.kind() != 'f' || (dt.itemsize() != 4 && dt.itemsize() != 8))
    fail(where + name + " must be float32 or float64, got dtype " + std::string(py::str(dt)));
  Costs c;
  c.is_f32 = dt.itemsize() == 4;
  c.array = c.is_f32 ? py::array(FArray::ensure(a)) : py::array(DArray::ensure(a));
  if (!c.array) {
    PyErr_Clear();
    fail(where + name + " could not be made C-contiguous");
  }
  return c;
}

// `num_labels` >= 0: the instance is relabelled (see hold_perturbation) to that many labels, the
// length `partitionable` must have (default: K = node_costs.shape[1]). `partitionable` None:
// no partitionable class (a multiway cut).
HeldInstance hold(py::handle node_costs, py::handle edges, py::handle edge_costs, py::handle partitionable,
                  const std::string& where, py::ssize_t num_labels = -1) {
  HeldInstance h;
  h.node_costs = hold_costs(node_costs, where, "node_costs");
  if (h.node_costs.ndim() != 2) fail(where + "node_costs must have shape [N, K]" + got_shape(h.node_costs.array));
  h.edges = IArray::ensure(require_kind(edges, "iu", where + "edges"));
  if (!h.edges) {
    PyErr_Clear();
    fail(where + "edges must be convertible to an int64 array");
  }
  if (h.edges.ndim() == 1 && h.edges.shape(0) == 0) h.edges = IArray(std::vector<py::ssize_t>{0, 2});  // e.g. []
  if (h.edges.ndim() != 2 || h.edges.shape(1) != 2) fail(where + "edges must have shape [E, 2]" + got_shape(h.edges));
  h.edge_costs = hold_costs(edge_costs, where, "edge_costs");
  if (h.edge_costs.ndim() != 1 || h.edge_costs.shape(0) != h.edges.shape(0))
    fail(where + "edge_costs must have shape [E] with E = len(edges) = " + std::to_string(h.edges.shape(0)) +
         got_shape(h.edge_costs.array));
  const py::ssize_t P = num_labels >= 0 ? num_labels : h.node_costs.shape(1);
  if (partitionable.is_none()) {
    h.partitionable = BArray(P);
    std::fill(h.partitionable.mutable_data(), h.partitionable.mutable_data() + P, uint8_t{0});
  } else {
    py::array flags = require_kind(partitionable, "biu", where + "partitionable", "a bool");
    h.partitionable = BArray::ensure(flags);
    if (!h.partitionable) {
      PyErr_Clear();
      fail(where + "partitionable must be a bool array");
    }
    if (h.partitionable.ndim() != 1 || h.partitionable.shape(0) != P)
      fail(where + (num_labels >= 0 ? "partitionable must have shape [L] with L = len(label_classes) = "
                                    : "partitionable must have shape [K] with K = node_costs.shape[1] = ") +
           std::to_string(P) + got_shape(h.partitionable));
    if (flags.dtype().kind() != 'b') {  // integers: 0 / 1 only (no wrap)
      IArray ints = IArray::ensure(flags);
      for (py::ssize_t k = 0; ints && k < ints.size(); ++k) {
        if (ints.data()[k] != 0 && ints.data()[k] != 1)
          fail(where + "partitionable must be a bool array (or integers 0 / 1); entry " + std::to_string(k) +
               " is " + std::to_string(ints.data()[k]));
      }
    }
  }
  h.view.num_nodes = h.node_costs.shape(0);
  h.view.num_classes = h.node_costs.shape(1);
  h.view.num_edges = h.edges.shape(0);
  if (h.node_costs.is_f32) h.view.node_costs_f32 = h.node_costs.f32();
  else h.view.node_costs = h.node_costs.f64();
  h.view.edges = h.edges.data();
  if (h.edge_costs.is_f32) h.view.edge_costs_f32 = h.edge_costs.f32();
  else h.view.edge_costs = h.edge_costs.f64();
  h.view.partitionable = h.partitionable.data();
  return h;
}

// `obj` as a C-contiguous int64 array of integer dtype and shape [n], or ValueError naming `name`.
IArray hold_node_ints(py::handle obj, const std::string& name, int64_t n) {
  IArray v = IArray::ensure(require_kind(obj, "iu", name));
  if (!v) {
    PyErr_Clear();
    fail(name + " must be convertible to an int64 array");
  }
  if (v.ndim() != 1 || v.shape(0) != n) fail(name + " must have shape [N] = [" + std::to_string(n) + "]" + got_shape(v));
  return v;  // int64 (an unsigned 64-bit value > 2^63 wraps negative: the callers' range checks catch it)
}

// Optional warm start: `labels` [N] ints, `clusters` [N] ints (or None), copied into the held
// instance as int32 after shape, dtype and int32-range checks. The class range [0, K) of the
// labels is checked by cops::validate_instance, with the other index ranges.
void hold_initial(HeldInstance& h, py::handle labels, py::handle clusters, const std::string& where) {
  if (labels.is_none()) {
    if (!clusters.is_none()) fail(where + "initial_clusters given without initial_labels");
    return;
  }
  const int64_t n = h.view.num_nodes;
  auto load = [&](py::handle obj, const char* name, std::vector<int32_t>& out) {
    IArray v = hold_node_ints(obj, where + name, n);
    out.resize(static_cast<size_t>(n));
    const int64_t* d = v.data();
    for (int64_t i = 0; i < n; ++i) {
      if (d[i] < INT32_MIN || d[i] > INT32_MAX) {
        fail(where + name + " must hold int32 values; node " + std::to_string(i) + " has " + std::to_string(d[i]));
      }
      out[static_cast<size_t>(i)] = static_cast<int32_t>(d[i]);
    }
  };
  load(labels, "initial_labels", h.initial_labels);
  h.view.initial_labels = h.initial_labels.data();
  if (!clusters.is_none()) {
    load(clusters, "initial_clusters", h.initial_clusters);
    h.view.initial_clusters = h.initial_clusters.data();
  }
}

// `label_classes` of a relabelled perturbation: an integer vector [L], L >= 1, copied (L is
// small): the solver checks the ids (check_relabelling in graph.cpp) and then indexes with them
// on its own thread, while another Python thread could write the caller's array.
std::vector<int64_t> hold_label_classes(py::handle obj, const std::string& where) {
  IArray classes = IArray::ensure(require_kind(obj, "iu", where + "label_classes"));
  if (!classes) {
    PyErr_Clear();
    fail(where + "label_classes must be convertible to an int64 array");
  }
  if (classes.ndim() != 1 || classes.shape(0) < 1)
    fail(where + "label_classes must have shape [L] with L >= 1" + got_shape(classes));
  return std::vector<int64_t>(classes.data(), classes.data() + classes.shape(0));
}

// Optional node-cost perturbation: `delta` of the node costs' shape and dtype (float32 or
// float64) and a real `scale` (its finiteness is checked by the solver); the solver uses
// node_costs + scale * delta. With `label_classes` (non-empty, see hold_label_classes) the
// instance is relabelled: L labels of node costs node_costs[:, label_classes[l]] + scale *
// delta[l, :], delta label-major [M, N] with M <= L (rows M.. are zero; see
// InstanceView::label_classes).
void hold_perturbation(HeldInstance& h, py::handle delta, py::handle scale, const std::string& where,
                       std::vector<int64_t> label_classes) {
  const bool relabel = !label_classes.empty();
  if (delta.is_none()) {
    if (relabel) fail(where + "label_classes needs a node_delta");
    return;
  }
  h.node_delta = hold_costs(delta, where, "node_delta");
  const std::string dtype = h.node_costs.is_f32 ? "float32" : "float64";
  if (h.node_delta.is_f32 != h.node_costs.is_f32)
    fail(where + "node_delta must have the dtype of node_costs (" + dtype + ")");
  const py::ssize_t N = h.node_costs.shape(0), K = h.node_costs.shape(1);
  if (relabel) {
    const py::ssize_t L = static_cast<py::ssize_t>(label_classes.size());
    if (h.node_delta.ndim() != 2 || h.node_delta.shape(1) != N || h.node_delta.shape(0) > L)
      fail(where + "node_delta must have shape [M, N] with N = " + std::to_string(N) +
           " and M <= len(label_classes) = " + std::to_string(L) + got_shape(h.node_delta.array));
    h.label_classes = std::move(label_classes);
    h.view.label_classes = h.label_classes.data();
    h.view.num_labels = L;
    h.view.delta_rows = h.node_delta.shape(0);
  } else if (h.node_delta.ndim() != 2 || h.node_delta.shape(0) != N || h.node_delta.shape(1) != K) {
    fail(where + "node_delta must have the shape of node_costs [N, K] = [" + std::to_string(N) + ", " +
         std::to_string(K) + "]" + got_shape(h.node_delta.array));
  }
  try {
    h.view.delta_scale = scale.cast<double>();
  } catch (const py::cast_error&) {
    fail(where + "the perturbation scale must be a real number, got " + std::string(py::repr(scale)));
  }
  if (h.node_delta.is_f32) h.view.node_delta_f32 = h.node_delta.f32();
  else h.view.node_delta = h.node_delta.f64();
}

template <class T>
py::array_t<T> to_array(const std::vector<T>& v) {
  py::array_t<T> out(static_cast<py::ssize_t>(v.size()));
  if (!v.empty()) std::memcpy(out.mutable_data(), v.data(), v.size() * sizeof(T));
  return out;
}

py::tuple to_python(const cops::Solution& s) {
  py::dict info;
  info["gaec_objective"] = s.gaec_objective;
  info["gaec_contractions"] = s.gaec_contractions;
  info["local_search_moves"] = s.local_search_moves;
  info["local_search_rounds"] = s.local_search_rounds;
  info["incremental_cluster_passes"] = s.incremental_cluster_passes;
  return py::make_tuple(to_array(s.node_labels), to_array(s.instance_ids), to_array(s.edge_labels), s.objective,
                        info);
}

py::tuple solve_one(py::handle node_costs, py::handle edges, py::handle edge_costs, py::handle partitionable,
                    bool local_search, py::handle initial_labels, py::handle initial_clusters) {
  HeldInstance h = hold(node_costs, edges, edge_costs, partitionable, "");
  hold_initial(h, initial_labels, initial_clusters, "");
  cops::SolveOptions opts;
  opts.local_search = local_search;
  cops::Solution sol;
  bool invalid = false;
  std::string message;
  {
    py::gil_scoped_release release;
    try {
      sol = cops::solve_amwc(h.view, opts);  // validates first
    } catch (const cops::InvalidInput& err) {
      invalid = true;
      message = err.message;
    }
  }
  if (invalid) fail(message);
  return to_python(sol);
}

py::list solve_batch(py::sequence instances, bool local_search, int num_threads, bool incremental_cluster_passes) {
  std::vector<HeldInstance> held;
  held.reserve(py::len(instances));
  for (size_t b = 0; b < py::len(instances); ++b) {
    py::sequence t = instances[b].cast<py::sequence>();
    const size_t len = py::len(t);
    if (len < 4 || len > 9 || len == 7)
      fail("each batch entry must be (node_costs, edges, edge_costs, partitionable[, initial_labels"
           "[, initial_clusters[, node_delta, scale[, label_classes]]]])");
    const std::string where = "instance " + std::to_string(b) + ": ";
    std::vector<int64_t> label_classes;  // relabelled: its length is the one partitionable must have
    if (len == 9 && !t[8].is_none()) label_classes = hold_label_classes(t[8], where);
    const py::ssize_t num_labels = label_classes.empty() ? -1 : static_cast<py::ssize_t>(label_classes.size());
    held.push_back(hold(t[0], t[1], t[2], t[3], where, num_labels));
    hold_initial(held.back(), len > 4 ? py::handle(t[4]) : py::handle(Py_None),
                 len > 5 ? py::handle(t[5]) : py::handle(Py_None), where);
    if (len >= 8) hold_perturbation(held.back(), t[6], t[7], where, std::move(label_classes));
  }
  std::vector<cops::InstanceView> views;
  views.reserve(held.size());
  for (auto& h : held) views.push_back(h.view);
  cops::SolveOptions opts;
  opts.local_search = local_search;
  opts.incremental_cluster_passes = incremental_cluster_passes;
  std::vector<cops::Solution> sols;
  {
    py::gil_scoped_release release;
    try {
      sols = cops::solve_amwc_batch(views, opts, num_threads);
    } catch (const cops::InvalidInput& err) {
      fail(err.message);  // a C++ exception; translated to ValueError once the GIL is back
    }
  }
  py::list out;
  for (const auto& s : sols) out.append(to_python(s));
  return out;
}

double objective(py::handle node_costs, py::handle edges, py::handle edge_costs, py::handle partitionable,
                 py::handle node_labels, py::handle instance_ids) {
  HeldInstance h = hold(node_costs, edges, edge_costs, partitionable, "");
  const int64_t n = h.view.num_nodes, K = h.view.num_classes;
  IArray labels = hold_node_ints(node_labels, "node_labels", n), clusters = hold_node_ints(instance_ids, "instance_ids", n);
  // int64 values (an unsigned value > 2^63 wraps negative: refused), checked, then as int32.
  std::vector<int32_t> lab(static_cast<size_t>(n)), ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t k = labels.data()[i], c = clusters.data()[i];
    if (k < 0 || k >= K)
      fail("node_labels must hold classes in [0, " + std::to_string(K) + "); node " + std::to_string(i) + " has " +
           std::to_string(k));
    if (c < INT32_MIN || c > INT32_MAX)
      fail("instance_ids must hold int32 values; node " + std::to_string(i) + " has " + std::to_string(c));
    lab[static_cast<size_t>(i)] = static_cast<int32_t>(k);
    ids[static_cast<size_t>(i)] = static_cast<int32_t>(c);
  }
  try {
    return cops::labelling_objective(h.view, lab.data(), ids.data());
  } catch (const cops::InvalidInput& err) {
    fail(err.message);
  }
}

// Per-segment sums of the cut logits over the edges of the COPS grid graph, read straight off the
// edge maps, for the edge term of the instance scores (post-processing). The grid-edge
// convention is GridGraph's (detectron2_cops/solvers/grid.py): distance d, sampling interval s,
// lo = (d == 1 ? 0 : d / 2), hi = d - lo; map position (c, i, j) is anchored at pixel
// (y, x) = (i * s, j * s); channel 0 joins (y - lo, x) and (y + hi, x), channel 1 joins
// (y, x - lo) and (y, x + hi); a position with an endpoint outside the grid is no edge (its
// value is not read). Per distance and segment k: sum and count of the values over the edges
// inside k (both ends in k) and over the edges leaving k (one end in k; such an edge counts for
// both of its segments). One pass over the ids (range check), then one over the maps, GIL
// released, that checks the values it reads.
py::tuple grid_edge_sums(py::handle ids, py::sequence maps, const std::vector<int64_t>& edge_distances,
                         const std::vector<int64_t>& edge_sampling_intervals, int64_t num_segments) {
  const std::string where = "grid_edge_sums: ";
  IArray grid = IArray::ensure(require_kind(ids, "iu", where + "ids"));
  if (!grid) {
    PyErr_Clear();
    fail(where + "ids must be convertible to an int64 array");
  }
  if (grid.ndim() != 2) fail(where + "ids must have shape [h, w]" + got_shape(grid));
  const int64_t D = static_cast<int64_t>(edge_distances.size()), S = num_segments;
  const int64_t h = grid.shape(0), w = grid.shape(1);
  if (static_cast<int64_t>(edge_sampling_intervals.size()) != D)
    fail(where + "edge_sampling_intervals must have one entry per edge distance: got " +
         std::to_string(edge_sampling_intervals.size()) + " for " + std::to_string(D) + " distances");
  if (static_cast<int64_t>(py::len(maps)) != D)
    fail(where + "maps must hold one map per edge distance (" + std::to_string(D) + "), got " +
         std::to_string(py::len(maps)));
  if (S < 0) fail(where + "num_segments must be >= 0");
  std::vector<FArray> held;
  for (int64_t d = 0; d < D; ++d) {
    const int64_t dist = edge_distances[d], s = edge_sampling_intervals[d];
    if (dist < 1 || s < 1)
      fail(where + "edge distances and sampling intervals must be >= 1; entry " + std::to_string(d) + " is " +
           std::to_string(dist) + " and " + std::to_string(s));
    const std::string name = where + "maps[" + std::to_string(d) + "]";
    py::array a = require_kind(maps[d], "f", name, "a float32");
    if (a.dtype().kind() != 'f' || a.dtype().itemsize() != 4)
      fail(name + " must be a float32 array, got dtype " + std::string(py::str(a.dtype())));
    held.push_back(FArray::ensure(a));  // a C-contiguous copy only when strided
    if (!held.back()) {
      PyErr_Clear();
      fail(name + " could not be made C-contiguous");
    }
    const int64_t Hd = h == 0 ? 0 : (h - 1) / s + 1, Wd = w == 0 ? 0 : (w - 1) / s + 1;
    const FArray& m = held.back();
    if (m.ndim() != 3 || m.shape(0) != 2 || m.shape(1) != Hd || m.shape(2) != Wd)
      fail(name + " must have shape [2, " + std::to_string(Hd) + ", " + std::to_string(Wd) + "] (distance " +
           std::to_string(dist) + ", interval " + std::to_string(s) + ")" + got_shape(m));
  }
  const int64_t* g = grid.data();
  for (int64_t p = 0; p < h * w; ++p) {
    if (g[p] < 0 || g[p] >= S)
      fail(where + "ids must hold segment ids in [0, " + std::to_string(S) + "); pixel (" + std::to_string(p / w) +
           ", " + std::to_string(p % w) + ") has " + std::to_string(g[p]));
  }
  const std::vector<py::ssize_t> shape = {static_cast<py::ssize_t>(D), static_cast<py::ssize_t>(S)};
  py::array_t<double> in_sum(shape), out_sum(shape);
  py::array_t<int64_t> in_cnt(shape), out_cnt(shape);
  double* is = in_sum.mutable_data();
  double* os = out_sum.mutable_data();
  int64_t* ic = in_cnt.mutable_data();
  int64_t* oc = out_cnt.mutable_data();
  std::vector<const float*> values;
  for (const FArray& m : held) values.push_back(m.data());
  std::string error;  // set, with the GIL released, by the first bad value read; the loops stop
  {
    py::gil_scoped_release release;
    std::fill(is, is + D * S, 0.0);
    std::fill(os, os + D * S, 0.0);
    std::fill(ic, ic + D * S, int64_t{0});
    std::fill(oc, oc + D * S, int64_t{0});
    for (int64_t d = 0; d < D && error.empty(); ++d) {
      const int64_t dist = edge_distances[d], s = edge_sampling_intervals[d];
      const int64_t lo = dist == 1 ? 0 : dist / 2, hi = dist - lo;
      const int64_t Hd = h == 0 ? 0 : (h - 1) / s + 1, Wd = w == 0 ? 0 : (w - 1) / s + 1;
      // Map rows (columns) whose anchor y (x) has both endpoints of a channel-0 (channel-1) edge
      // in the grid: lo <= i * s <= h - 1 - hi.
      const int64_t first = lo == 0 ? 0 : (lo - 1) / s + 1;
      const int64_t end_i = h - 1 - hi >= 0 ? (h - 1 - hi) / s + 1 : 0, end_j = w - 1 - hi >= 0 ? (w - 1 - hi) / s + 1 : 0;
      double* isd = is + d * S;
      double* osd = os + d * S;
      int64_t* icd = ic + d * S;
      int64_t* ocd = oc + d * S;
      for (int64_t c = 0; c < 2 && error.empty(); ++c) {
        const int64_t i0 = c == 0 ? first : 0, i1 = c == 0 ? end_i : Hd;
        const int64_t j0 = c == 0 ? 0 : first, j1 = c == 0 ? Wd : end_j;
        if (i0 >= i1 || j0 >= j1) continue;  // no edge; else lo + hi < h (c = 0) or w (c = 1): no overflow below
        const int64_t step_a = c == 0 ? -lo * w : -lo, step_b = c == 0 ? hi * w : hi;  // endpoints from the anchor
        for (int64_t i = i0; i < i1 && error.empty(); ++i) {
          const float* row = values[d] + (c * Hd + i) * Wd;
          for (int64_t j = j0; j < j1; ++j) {
            const int64_t anchor = i * s * w + j * s;
            // The ids are read once and range-checked where they are used (they were checked
            // above, but another thread may write them while the GIL is released).
            const int64_t a = g[anchor + step_a], b = g[anchor + step_b];
            if (a < 0 || b < 0 || a >= S || b >= S) {
              error = "ids changed during the call (another thread wrote them)";
              break;
            }
            const float x = row[j];
            if (!std::isfinite(x)) {
              error = "maps must hold finite values; maps[" + std::to_string(d) + "] has " + std::to_string(x) +
                      " at (" + std::to_string(c) + ", " + std::to_string(i) + ", " + std::to_string(j) + ")";
              break;
            }
            if (a == b) {
              isd[a] += x;
              ++icd[a];
            } else {
              osd[a] += x;
              ++ocd[a];
              osd[b] += x;
              ++ocd[b];
            }
          }
        }
      }
    }
  }
  if (!error.empty()) fail(where + error);
  return py::make_tuple(in_sum, in_cnt, out_sum, out_cnt);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "Native AMWC/MWC solvers of detectron2-cops (GAEC + local search).";
  m.def("solve_amwc", &solve_one, py::arg("node_costs"), py::arg("edges"), py::arg("edge_costs"),
        py::arg("partitionable"), py::arg("local_search") = true, py::arg("initial_labels") = py::none(),
        py::arg("initial_clusters") = py::none(),
        "Solve one AMWC instance (GAEC, or local search from initial_labels/initial_clusters when "
        "given; partitionable None: a multiway cut); returns (node_labels, instance_ids, edge_labels, "
        "objective, info).");
  m.def("solve_amwc_batch", &solve_batch, py::arg("instances"), py::arg("local_search") = true,
        py::arg("num_threads") = 0, py::arg("incremental_cluster_passes") = true,
        "Solve a list of AMWC instances (node_costs, edges, edge_costs, partitionable[, initial_labels"
        "[, initial_clusters[, node_delta, scale[, label_classes]]]]) on a pool of threads (GIL released); with "
        "node_delta the node costs are node_costs + scale * node_delta (with label_classes: "
        "node_costs[:, label_classes] + scale * node_delta.T, node_delta [M <= L, N]), computed on the worker.");
  m.def("clear_graph_structure_cache", &cops::clear_graph_structure_cache,
        "Drop the graph structures the solvers keep for the last few distinct edge sets (the next "
        "solve on those edges builds its structure again).");
  m.def("labelling_objective", &objective, py::arg("node_costs"), py::arg("edges"), py::arg("edge_costs"),
        py::arg("partitionable"), py::arg("node_labels"), py::arg("instance_ids"),
        "AMWC objective of a labelling (edge cut iff instance ids differ).");
  m.def("grid_edge_sums", &grid_edge_sums, py::arg("ids"), py::arg("maps"), py::arg("edge_distances"),
        py::arg("edge_sampling_intervals"), py::arg("num_segments"),
        "Per edge distance and segment of the grid ids ([h, w] ints in [0, num_segments)): sum and count of "
        "the edge maps' values (one float32 [2, ceil(h / s), ceil(w / s)] map per distance, GridGraph's "
        "convention) over the edges inside the segment and over the edges leaving it (counted for both "
        "ends); returns (in_sum float64, in_count int64, out_sum float64, out_count int64), each "
        "[len(edge_distances), num_segments]. Raises ValueError on a wrong dtype or shape, a wrong number "
        "of maps or intervals, a distance or interval < 1, ids out of range or a non-finite value on an edge.");
}
