// pybind11 bindings of the AMWC/MWC solvers: `detectron2_cops._C`.
//
// The Python layer (detectron2_cops/solvers) converts inputs to C-contiguous float64 / int64 /
// uint8 arrays and gives friendly errors; these bindings re-check every shape, and refuse dtypes
// that a forced conversion would change (require_kind), so that no input can make the native code
// read out of bounds or solve something else than given; they release the GIL while solving.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <string>

#include "amwc.h"

namespace py = pybind11;

namespace {

using DArray = py::array_t<double, py::array::c_style | py::array::forcecast>;
using FArray = py::array_t<float, py::array::c_style>;
using IArray = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
using BArray = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;

// Costs stay float32 when given as float32 (made C-contiguous if strided; widened inside the
// solver); anything else is converted to float64.
struct Costs {
  DArray f64;
  FArray f32;
  bool is_f32 = false;
  py::ssize_t ndim() const { return is_f32 ? f32.ndim() : f64.ndim(); }
  py::ssize_t shape(int i) const { return is_f32 ? f32.shape(i) : f64.shape(i); }
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

// Refuses `obj` (an array, or what NumPy makes of a list or scalar) unless its dtype kind is one
// of `kinds` ('f' float, 'i' / 'u' integer, 'b' bool): the forcecast conversions below would
// otherwise truncate floats to integers, drop imaginary parts, parse strings or wrap integers
// without an error. Empty arrays pass (nothing is converted).
void require_kind(py::handle obj, const char* kinds, const std::string& what) {
  py::array a = py::array::ensure(obj);
  if (!a) {
    PyErr_Clear();
    fail(what + " must be convertible to a numeric array");
  }
  const char kind = a.dtype().kind();
  if (a.size() > 0 && std::strchr(kinds, kind) == nullptr) {
    const std::string want = std::strchr(kinds, 'f') != nullptr ? "a real (float or integer)" : "an integer";
    fail(what + " must be " + want + " array, got dtype " + std::string(py::str(a.dtype())));
  }
}

Costs hold_costs(py::handle obj, const std::string& where, const char* name) {
  require_kind(obj, "fiu", where + name);
  Costs c;
  if (py::isinstance<py::array>(obj)) {
    py::array a = py::reinterpret_borrow<py::array>(obj);
    if (a.dtype().kind() == 'f' && a.dtype().itemsize() == 4) {
      // float32 stays float32 (a C-contiguous copy only when it is strided, e.g. a column subset).
      c.f32 = FArray::ensure(obj);
      if (!c.f32) {
        PyErr_Clear();
        fail(where + name + " (float32) could not be made C-contiguous");
      }
      c.is_f32 = true;
      return c;
    }
  }
  c.f64 = DArray::ensure(obj);
  if (!c.f64) {
    PyErr_Clear();
    fail(where + name + " must be convertible to a numeric array");
  }
  return c;
}

// `num_labels` >= 0: the instance is relabelled (see hold_perturbation) to that many labels, the
// length `partitionable` must have (default: K = node_costs.shape[1]).
HeldInstance hold(py::handle node_costs, py::handle edges, py::handle edge_costs, py::handle partitionable,
                  const std::string& where, py::ssize_t num_labels = -1) {
  require_kind(edges, "iu", where + "edges");
  require_kind(partitionable, "biu", where + "partitionable");
  HeldInstance h{hold_costs(node_costs, where, "node_costs"), IArray::ensure(edges),
                 hold_costs(edge_costs, where, "edge_costs"), BArray::ensure(partitionable), {}};
  if (!h.edges || !h.partitionable) {
    PyErr_Clear();
    fail(where + "edges and partitionable must be convertible to integer arrays");
  }
  if (h.node_costs.ndim() != 2) fail(where + "node_costs must have shape [N, K]");
  if (h.edges.ndim() != 2 || h.edges.shape(1) != 2) fail(where + "edges must have shape [E, 2]");
  if (h.edge_costs.ndim() != 1 || h.edge_costs.shape(0) != h.edges.shape(0))
    fail(where + "edge_costs must have shape [E] with E = len(edges)");
  if (num_labels >= 0) {
    if (h.partitionable.ndim() != 1 || h.partitionable.shape(0) != num_labels)
      fail(where + "partitionable must have shape [L] with L = len(label_classes)");
  } else if (h.partitionable.ndim() != 1 || h.partitionable.shape(0) != h.node_costs.shape(1)) {
    fail(where + "partitionable must have shape [K] with K = node_costs.shape[1]");
  }
  if (py::array::ensure(partitionable).dtype().kind() != 'b') {  // integers: 0 / 1 only (no wrap)
    IArray flags = IArray::ensure(partitionable);
    for (py::ssize_t k = 0; flags && k < flags.size(); ++k) {
      if (flags.data()[k] != 0 && flags.data()[k] != 1)
        fail(where + "partitionable must be a bool array (or integers 0 / 1); entry " + std::to_string(k) +
             " is " + std::to_string(flags.data()[k]));
    }
  }
  h.view.num_nodes = h.node_costs.shape(0);
  h.view.num_classes = h.node_costs.shape(1);
  h.view.num_edges = h.edges.shape(0);
  if (h.node_costs.is_f32) h.view.node_costs_f32 = h.node_costs.f32.data();
  else h.view.node_costs = h.node_costs.f64.data();
  h.view.edges = h.edges.data();
  if (h.edge_costs.is_f32) h.view.edge_costs_f32 = h.edge_costs.f32.data();
  else h.view.edge_costs = h.edge_costs.f64.data();
  h.view.partitionable = h.partitionable.data();
  return h;
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
  auto load = [&](py::handle obj, const char* name, int64_t lo, int64_t hi, std::vector<int32_t>& out) {
    if (!py::isinstance<py::array>(obj)) fail(where + name + " must be a numpy integer array of shape [N]");
    py::array a = py::reinterpret_borrow<py::array>(obj);
    const char kind = a.dtype().kind();
    if (kind != 'i' && kind != 'u') fail(where + name + " must be an integer array, got dtype " +
                                         std::string(py::str(a.dtype())));
    if (a.ndim() != 1 || a.shape(0) != n)
      fail(where + name + " must have shape [N] with N = " + std::to_string(n));
    IArray v = IArray::ensure(obj);  // int64 (an unsigned 64-bit value > 2^63 wraps negative: caught below)
    if (!v) {
      PyErr_Clear();
      fail(where + name + " must be convertible to int64");
    }
    out.resize(static_cast<size_t>(n));
    const int64_t* d = v.data();
    for (int64_t i = 0; i < n; ++i) {
      if (d[i] < lo || d[i] >= hi) {
        fail(where + name + " must hold values in [" + std::to_string(lo) + ", " + std::to_string(hi) +
             "); node " + std::to_string(i) + " has " + std::to_string(d[i]));
      }
      out[static_cast<size_t>(i)] = static_cast<int32_t>(d[i]);
    }
  };
  load(labels, "initial_labels", INT32_MIN, static_cast<int64_t>(INT32_MAX) + 1, h.initial_labels);
  h.view.initial_labels = h.initial_labels.data();
  if (!clusters.is_none()) {
    load(clusters, "initial_clusters", INT32_MIN, static_cast<int64_t>(INT32_MAX) + 1, h.initial_clusters);
    h.view.initial_clusters = h.initial_clusters.data();
  }
}

// Optional node-cost perturbation: `delta` of the node costs' shape and dtype (float32 or
// float64) and a finite `scale`; the solver uses node_costs + scale * delta. With `label_classes`
// ([L] class ids in [0, K), not None) the instance is relabelled: L labels of node costs
// node_costs[:, label_classes[l]] + scale * delta[l, :], delta label-major [M, N] with M <= L
// (rows M.. are zero; see InstanceView::label_classes).
void hold_perturbation(HeldInstance& h, py::handle delta, py::handle scale, const std::string& where,
                       py::handle label_classes = py::none()) {
  const bool relabel = !label_classes.is_none();
  if (delta.is_none()) {
    if (relabel) fail(where + "label_classes needs a node_delta");
    return;
  }
  h.node_delta = hold_costs(delta, where, "node_delta");
  if (h.node_delta.is_f32 != h.node_costs.is_f32)
    fail(where + "node_delta must have the dtype of node_costs (float32 or float64)");
  if (relabel) {
    require_kind(label_classes, "iu", where + "label_classes");
    IArray classes = IArray::ensure(label_classes);
    if (!classes) {
      PyErr_Clear();
      fail(where + "label_classes must be convertible to an integer array");
    }
    const py::ssize_t L = classes.ndim() == 1 ? classes.shape(0) : 0;
    if (classes.ndim() != 1 || L < 1) fail(where + "label_classes must have shape [L] with L >= 1");
    // The class ids are checked by the solver (check_relabelling in graph.cpp) before any use.
    // Copied (L is small): the solver checks the ids and then indexes with them, on its own
    // thread, while another Python thread could write the caller's array.
    h.label_classes.assign(classes.data(), classes.data() + L);
    const int64_t* c = h.label_classes.data();
    if (h.node_delta.ndim() != 2 || h.node_delta.shape(1) != h.node_costs.shape(0) || h.node_delta.shape(0) > L)
      fail(where + "node_delta must have shape [M, N] with M <= len(label_classes) when label_classes is given");
    h.view.label_classes = c;
    h.view.num_labels = L;
    h.view.delta_rows = h.node_delta.shape(0);
  } else if (h.node_delta.ndim() != 2 || h.node_delta.shape(0) != h.node_costs.shape(0) ||
             h.node_delta.shape(1) != h.node_costs.shape(1)) {
    fail(where + "node_delta must have the shape of node_costs [N, K]");
  }
  double s = 0.0;
  try {
    s = scale.cast<double>();
  } catch (const py::cast_error&) {
    fail(where + "the perturbation scale must be a real number");
  }
  if (!std::isfinite(s)) fail(where + "the perturbation scale must be finite");
  if (h.node_delta.is_f32) h.view.node_delta_f32 = h.node_delta.f32.data();
  else h.view.node_delta = h.node_delta.f64.data();
  h.view.delta_scale = s;
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
    py::ssize_t num_labels = -1;  // relabelled: the length partitionable must have
    if (len == 9 && !t[8].is_none()) {
      py::array lc = py::array::ensure(t[8]);
      if (!lc) {
        PyErr_Clear();
        fail(where + "label_classes must be convertible to an integer array");
      }
      if (lc.ndim() != 1 || lc.shape(0) < 1) fail(where + "label_classes must have shape [L] with L >= 1");
      num_labels = lc.shape(0);
    }
    held.push_back(hold(t[0], t[1], t[2], t[3], where, num_labels));
    hold_initial(held.back(), len > 4 ? py::handle(t[4]) : py::handle(Py_None),
                 len > 5 ? py::handle(t[5]) : py::handle(Py_None), where);
    if (len >= 8) hold_perturbation(held.back(), t[6], t[7], where, len == 9 ? py::handle(t[8]) : py::handle(Py_None));
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
                 py::handle node_labels, py::handle cluster_ids) {
  HeldInstance h = hold(node_costs, edges, edge_costs, partitionable, "");
  require_kind(node_labels, "iu", "node_labels");
  require_kind(cluster_ids, "iu", "cluster_ids");
  IArray labels = IArray::ensure(node_labels), clusters = IArray::ensure(cluster_ids);
  if (!labels || !clusters) {
    PyErr_Clear();
    fail("node_labels and cluster_ids must be integer arrays");
  }
  if (labels.ndim() != 1 || labels.shape(0) != h.view.num_nodes || clusters.ndim() != 1 ||
      clusters.shape(0) != h.view.num_nodes)
    fail("node_labels and cluster_ids must have shape [N]");
  // int64 values (an unsigned value > 2^63 wraps negative: refused), checked, then as int32.
  const py::ssize_t n = labels.shape(0);
  std::vector<int32_t> lab(static_cast<size_t>(n)), ids(static_cast<size_t>(n));
  for (py::ssize_t i = 0; i < n; ++i) {
    const int64_t k = labels.data()[i], c = clusters.data()[i];
    if (k < 0 || k >= h.view.num_classes) fail("node_labels out of range [0, K); node " + std::to_string(i) +
                                               " has " + std::to_string(k));
    if (c < INT32_MIN || c > INT32_MAX) fail("cluster_ids must hold int32 values; node " + std::to_string(i) +
                                             " has " + std::to_string(c));
    lab[static_cast<size_t>(i)] = static_cast<int32_t>(k);
    ids[static_cast<size_t>(i)] = static_cast<int32_t>(c);
  }
  try {
    return cops::labelling_objective(h.view, lab.data(), ids.data());
  } catch (const cops::InvalidInput& err) {
    fail(err.message);
  }
}

// Per-segment sums over the edges of a labelled graph, for the edge term of the instance scores
// (post-processing): for every segment s, the sum and count of `values` over the edges inside s
// (both ends in s) and over the edges leaving s (one end in s; such an edge counts for both of its
// segments). One pass over the edges, GIL released.
py::tuple segment_edge_sums(py::handle segments, py::handle edges, py::handle values, int64_t num_segments) {
  require_kind(segments, "iu", "segment_edge_sums: segments");
  require_kind(edges, "iu", "segment_edge_sums: edges");
  require_kind(values, "fiu", "segment_edge_sums: values");
  IArray seg = IArray::ensure(segments), e = IArray::ensure(edges);
  DArray v = DArray::ensure(values);
  if (!seg || !e || !v) {
    PyErr_Clear();
    fail("segment_edge_sums: segments and edges must be integer arrays, values a numeric array");
  }
  if (seg.ndim() != 1) fail("segment_edge_sums: segments must have shape [N]");
  if (e.ndim() != 2 || e.shape(1) != 2) fail("segment_edge_sums: edges must have shape [E, 2]");
  if (v.ndim() != 1 || v.shape(0) != e.shape(0)) fail("segment_edge_sums: values must have shape [E] with E = len(edges)");
  if (num_segments < 0) fail("segment_edge_sums: num_segments must be >= 0");
  const int64_t n = seg.shape(0), E = e.shape(0), S = num_segments;
  const int64_t* sp = seg.data();
  const int64_t* ep = e.data();
  const double* vp = v.data();
  for (int64_t i = 0; i < n; ++i) {
    if (sp[i] < 0 || sp[i] >= S)
      fail("segment_edge_sums: segments must hold ids in [0, " + std::to_string(S) + "); node " + std::to_string(i) +
           " has " + std::to_string(sp[i]));
  }
  for (int64_t k = 0; k < E; ++k) {
    if (ep[2 * k] < 0 || ep[2 * k] >= n || ep[2 * k + 1] < 0 || ep[2 * k + 1] >= n)
      fail("segment_edge_sums: edges must hold node ids in [0, " + std::to_string(n) + "); edge " + std::to_string(k) +
           " is (" + std::to_string(ep[2 * k]) + ", " + std::to_string(ep[2 * k + 1]) + ")");
  }
  for (int64_t k = 0; k < E; ++k) {
    if (!(std::fabs(vp[k]) < 0x1p960))  // the solvers' bound on costs: the sums stay finite
      fail("segment_edge_sums: values must be finite with |value| < 2^960; found " + std::to_string(vp[k]) + " at edge " + std::to_string(k));
  }
  py::array_t<double> in_sum(S), out_sum(S);
  py::array_t<int64_t> in_cnt(S), out_cnt(S);
  double* is = in_sum.mutable_data();
  double* os = out_sum.mutable_data();
  int64_t* ic = in_cnt.mutable_data();
  int64_t* oc = out_cnt.mutable_data();
  bool changed = false;
  {
    py::gil_scoped_release release;
    std::fill(is, is + S, 0.0);
    std::fill(os, os + S, 0.0);
    std::fill(ic, ic + S, int64_t{0});
    std::fill(oc, oc + S, int64_t{0});
    for (int64_t k = 0; k < E; ++k) {
      // Every index is read once and range-checked where it is used (the arrays were checked
      // above, but another thread may write them while the GIL is released).
      const int64_t u = ep[2 * k], v = ep[2 * k + 1];
      if (u < 0 || v < 0 || u >= n || v >= n) {
        changed = true;
        break;
      }
      const int64_t a = sp[u], b = sp[v];
      if (a < 0 || b < 0 || a >= S || b >= S) {
        changed = true;
        break;
      }
      const double x = vp[k];
      if (a == b) {
        is[a] += x;
        ++ic[a];
      } else {
        os[a] += x;
        ++oc[a];
        os[b] += x;
        ++oc[b];
      }
    }
  }
  if (changed) fail("segment_edge_sums: segments or edges changed during the call (another thread wrote them)");
  return py::make_tuple(in_sum, in_cnt, out_sum, out_cnt);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "Native AMWC/MWC solvers of detectron2-cops (GAEC + local search).";
  m.def("solve_amwc", &solve_one, py::arg("node_costs"), py::arg("edges"), py::arg("edge_costs"),
        py::arg("partitionable"), py::arg("local_search") = true, py::arg("initial_labels") = py::none(),
        py::arg("initial_clusters") = py::none(),
        "Solve one AMWC instance (GAEC, or local search from initial_labels/initial_clusters when "
        "given); returns (node_labels, instance_ids, edge_labels, objective, info).");
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
        py::arg("partitionable"), py::arg("node_labels"), py::arg("cluster_ids"),
        "AMWC objective of a labelling (edge cut iff cluster ids differ).");
  m.def("segment_edge_sums", &segment_edge_sums, py::arg("segments"), py::arg("edges"), py::arg("values"),
        py::arg("num_segments"),
        "Per segment: (sum, count) of values over the edges inside it and over the edges leaving it; "
        "returns (in_sum, in_count, out_sum, out_count), each [num_segments].");
}
