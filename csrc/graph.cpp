// Instance validation, simple-graph construction, objective, and the solve entry points.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <exception>
#include <map>
#include <mutex>
#include <new>
#include <sstream>
#include <thread>
#include <tuple>

#include "graph.h"
#include "simd.h"
#include "thread_pool.h"

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#define COPS_HAVE_GETPID 1
#endif

namespace cops {

namespace {

// Node cost at flat index idx = i * K + k of float64 or (solver path) float32 node costs.
inline double node_cost(const InstanceView& inst, int64_t idx) {
  return inst.node_costs != nullptr ? inst.node_costs[idx] : static_cast<double>(inst.node_costs_f32[idx]);
}

// Costs must be finite with |c| < 2^960 (kCostBound): every sum the solvers form (a cluster's
// summed class costs, merged edge costs, the objective, a gain as a difference of such sums) has
// fewer than 2^34 terms, so it stays below 2^994 and cannot overflow to +-inf (which would give a
// wrong labelling without an error). float32 costs are always within it.
constexpr double kCostBound = 0x1p960;

bool within_bound(double x) { return std::fabs(x) < kCostBound; }  // false for NaN

// True iff every value is finite with |x| < kCostBound, i.e. its biased exponent e (bits 52-62)
// is below 960 + 1023 = 1983 (NaN and +-inf have e = 2047). Adding 2048 - 1983 = 65 to e carries
// into bit 63 exactly when e >= 1983: a branch-free add-and-OR reduction that the compiler
// vectorises (AVX2 has no unsigned 64-bit compare).
bool all_within_bound(const double* x, int64_t n) {
  constexpr uint64_t kExp = 0x7ff0000000000000ull;
  constexpr uint64_t kCarry = static_cast<uint64_t>(2048 - (960 + 1023)) << 52;
  uint64_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint64_t u;
    std::memcpy(&u, x + i, sizeof(u));
    bad |= (u & kExp) + kCarry;
  }
  return (bad >> 63) == 0;
}

// True iff every edge holds node ids in [0, N) and no edge is a self-loop (one vectorisable pass).
bool edges_valid(const InstanceView& inst) {
  int64_t lo = 0, hi = 0, loops = 0;
  for (int64_t e = 0; e < inst.num_edges; ++e) {
    const int64_t a = inst.edges[2 * e], b = inst.edges[2 * e + 1];
    lo = std::min(lo, std::min(a, b));
    hi = std::max(hi, std::max(a, b));
    loops += a == b;
  }
  return !(lo < 0 || (inst.num_edges > 0 && hi >= inst.num_nodes) || loops > 0);
}

}  // namespace

void validate_instance(const InstanceView& inst) {
  std::ostringstream msg;
  if (inst.num_nodes < 0 || inst.num_classes < 0 || inst.num_edges < 0) {
    throw InvalidInput{"sizes must be non-negative"};
  }
  if (inst.num_nodes > INT32_MAX - 1 || inst.num_edges > INT32_MAX - 1) {
    throw InvalidInput{"instances with more than 2^31 - 2 nodes or edges are not supported"};
  }
  if (inst.num_nodes > 0 && inst.num_classes == 0) {
    throw InvalidInput{"node_costs must have at least one class (K >= 1) when there are nodes"};
  }
  // Fast, vectorisable passes first; the slow loops below only run to name the offending entry.
  const int64_t nk = inst.num_nodes * inst.num_classes;
  if (!inst.node_costs_known_finite && !all_within_bound(inst.node_costs, nk)) {
    for (int64_t i = 0; i < nk; ++i) {
      if (!within_bound(inst.node_costs[i])) {
        msg << "node_costs must be finite with |value| < 2^960 (so that no sum of costs overflows); found "
            << inst.node_costs[i] << " at node "
            << i / inst.num_classes << ", class " << i % inst.num_classes;
        throw InvalidInput{msg.str()};
      }
    }
  }
  if (!inst.edges_known_valid && !edges_valid(inst)) {
    for (int64_t e = 0; e < inst.num_edges; ++e) {
      const int64_t a = inst.edges[2 * e], b = inst.edges[2 * e + 1];
      if (a < 0 || b < 0 || a >= inst.num_nodes || b >= inst.num_nodes) {
        msg << "edges must hold node ids in [0, " << inst.num_nodes << "); edge " << e << " is (" << a
            << ", " << b << ")";
        throw InvalidInput{msg.str()};
      }
      if (a == b) {
        msg << "edges must not contain self-loops; edge " << e << " is (" << a << ", " << b << ")";
        throw InvalidInput{msg.str()};
      }
    }
  }
  if (!inst.edge_costs_known_finite && !all_within_bound(inst.edge_costs, inst.num_edges)) {
    for (int64_t e = 0; e < inst.num_edges; ++e) {
      if (!within_bound(inst.edge_costs[e])) {
        msg << "edge_costs must be finite with |value| < 2^960 (so that no sum of costs overflows); found "
            << inst.edge_costs[e] << " at edge " << e;
        throw InvalidInput{msg.str()};
      }
    }
  }
  if (inst.initial_labels != nullptr) {
    for (int64_t i = 0; i < inst.num_nodes; ++i) {
      const int32_t k = inst.initial_labels[i];
      if (k < 0 || k >= inst.num_classes) {
        msg << "initial_labels must hold classes in [0, " << inst.num_classes << "); node " << i << " has " << k;
        throw InvalidInput{msg.str()};
      }
    }
  } else if (inst.initial_clusters != nullptr) {
    throw InvalidInput{"initial_clusters given without initial_labels"};
  }
}

namespace detail {

void build_graph_structure(const int32_t* edges, int64_t E, int32_t n, GraphStructure& g) {
  g.num_nodes = n;
  g.u.clear();
  g.v.clear();

  // Bucket input edges by their smaller endpoint (counting sort), then merge duplicates per
  // bucket with a marker array: O(N + E), deterministic order.
  std::vector<int64_t> start, fill;
  std::vector<int32_t> seen_row, uid_of;
  start.assign(static_cast<size_t>(n) + 1, 0);
  for (int64_t e = 0; e < E; ++e) {
    const int32_t a = edges[2 * e], b = edges[2 * e + 1];
    start[std::min(a, b) + 1]++;
  }
  for (int32_t i = 0; i < n; ++i) start[i + 1] += start[i];
  std::vector<int32_t>& bucket = g.order;
  bucket.resize(E);
  {
    fill.assign(start.begin(), start.end() - 1);
    for (int64_t e = 0; e < E; ++e) {
      const int32_t a = edges[2 * e], b = edges[2 * e + 1];
      bucket[fill[std::min(a, b)]++] = static_cast<int32_t>(e);
    }
  }
  seen_row.assign(n, -1);
  uid_of.resize(n);
  g.target.resize(E);
  g.u.reserve(E);
  g.v.reserve(E);
  for (int32_t r = 0; r < n; ++r) {
    for (int64_t p = start[r]; p < start[r + 1]; ++p) {
      const int32_t e = bucket[p];
      const int32_t other = std::max(edges[2 * e], edges[2 * e + 1]);
      if (seen_row[other] == r) {
        g.target[p] = uid_of[other];
      } else {
        const int32_t id = static_cast<int32_t>(g.u.size());
        seen_row[other] = r;
        uid_of[other] = id;
        g.u.push_back(r);
        g.v.push_back(other);
        g.target[p] = ~id;
      }
    }
  }

  const int32_t Eu = g.num_edges();
  g.offsets.assign(static_cast<size_t>(n) + 1, 0);
  for (int32_t e = 0; e < Eu; ++e) {
    g.offsets[g.u[e] + 1]++;
    g.offsets[g.v[e] + 1]++;
  }
  for (int32_t i = 0; i < n; ++i) g.offsets[i + 1] += g.offsets[i];
  g.nbr.resize(2 * static_cast<size_t>(Eu));
  g.eid.resize(2 * static_cast<size_t>(Eu));
  fill.assign(g.offsets.begin(), g.offsets.end() - 1);
  for (int32_t e = 0; e < Eu; ++e) {
    int64_t p = fill[g.u[e]]++;
    g.nbr[p] = g.v[e];
    g.eid[p] = e;
    p = fill[g.v[e]]++;
    g.nbr[p] = g.u[e];
    g.eid[p] = e;
  }
}

void attach_structure(const GraphStructure& s, const InstanceView& inst, SimpleGraph& g) {
  g.num_nodes = s.num_nodes;
  g.u = {s.u.data(), s.u.size()};
  g.v = {s.v.data(), s.v.size()};
  g.offsets = {s.offsets.data(), s.offsets.size()};
  g.nbr = {s.nbr.data(), s.nbr.size()};
  g.eid = {s.eid.data(), s.eid.size()};
  g.w.resize(s.u.size());
  double* w = g.w.data();
  const double* c = inst.edge_costs;
  const int32_t* order = s.order.data();
  const int32_t* target = s.target.data();
  const size_t E = s.order.size();
  for (size_t p = 0; p < E; ++p) {
    const int32_t t = target[p];
    if (t < 0) w[~t] = c[order[p]];
    else w[t] += c[order[p]];
  }
}

namespace {

struct StructureCache {
  std::mutex mutex;
  std::vector<std::shared_ptr<const GraphStructure>> entries;  // most recently used first
#ifdef COPS_HAVE_GETPID
  pid_t owner = getpid();
#endif
};

StructureCache& structure_cache() {
  // Leaked, like the thread pool (no race with the process teardown). A child process after
  // fork() starts its own cache: the parent's mutex may have been held by a thread the child
  // does not have (the parent's entries stay unused in the child).
  static std::atomic<StructureCache*> instance{nullptr};
  StructureCache* c = instance.load(std::memory_order_acquire);
#ifdef COPS_HAVE_GETPID
  const bool stale = c == nullptr || c->owner != getpid();
#else
  const bool stale = c == nullptr;
#endif
  if (stale) {
    StructureCache* fresh = new StructureCache;
    if (instance.compare_exchange_strong(c, fresh, std::memory_order_acq_rel)) return *fresh;
    delete fresh;  // another thread installed one first: c is now that one
  }
  return *c;
}

// Whether `inst` has exactly the edges `s` was built from (entry by entry, as given).
bool same_edges(const GraphStructure& s, const InstanceView& inst) {
  if (s.num_nodes != inst.num_nodes || s.input_edges.size() != 2 * static_cast<size_t>(inst.num_edges)) return false;
  const int32_t* a = s.input_edges.data();
  const int64_t* b = inst.edges;
  const size_t n = s.input_edges.size();
  constexpr size_t kChunk = 4096;  // vectorised OR of differences, early exit per chunk
  for (size_t start = 0; start < n; start += kChunk) {
    const size_t end = std::min(n, start + kChunk);
    uint64_t diff = 0;
    for (size_t i = start; i < end; ++i) diff |= static_cast<uint64_t>(static_cast<int64_t>(a[i]) ^ b[i]);
    if (diff) return false;
  }
  return true;
}

}  // namespace

std::shared_ptr<const GraphStructure> find_structure(const InstanceView& inst) {
  if (inst.num_edges <= 0 || inst.num_nodes <= 0 || inst.num_nodes > INT32_MAX - 1) return nullptr;
  StructureCache& cache = structure_cache();
  std::vector<std::shared_ptr<const GraphStructure>> snapshot;
  {
    std::lock_guard<std::mutex> lock(cache.mutex);
    snapshot = cache.entries;
  }
  for (const auto& s : snapshot) {  // compared outside the lock: entries are immutable
    if (!same_edges(*s, inst)) continue;
    std::lock_guard<std::mutex> lock(cache.mutex);
    auto it = std::find(cache.entries.begin(), cache.entries.end(), s);
    if (it != cache.entries.end()) std::rotate(cache.entries.begin(), it, it + 1);
    return s;
  }
  return nullptr;
}

std::shared_ptr<const GraphStructure> make_structure(const InstanceView& inst) {
  auto s = std::make_shared<GraphStructure>();
  const int32_t n = static_cast<int32_t>(inst.num_nodes);
  const int64_t E = std::max<int64_t>(inst.num_edges, 0);
  // The edges are read once, into the int32 copy, which is checked again and is all the build
  // reads: an array that another thread writes during the call can give a wrong graph or an
  // error, never an out-of-range index.
  s->input_edges.resize(2 * static_cast<size_t>(E));
  int32_t* copy = s->input_edges.data();
  int64_t lo = 0, hi = 0, loops = 0;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t a = inst.edges[2 * e], b = inst.edges[2 * e + 1];
    lo = std::min(lo, std::min(a, b));
    hi = std::max(hi, std::max(a, b));
    loops += a == b;
    copy[2 * e] = static_cast<int32_t>(a);
    copy[2 * e + 1] = static_cast<int32_t>(b);
  }
  if (lo < 0 || (E > 0 && hi >= inst.num_nodes) || loops > 0) {
    throw InvalidInput{"edges changed while the solver read them (another thread wrote the array "
                       "during the call) and now hold invalid node ids or self-loops"};
  }
  build_graph_structure(copy, E, n, *s);
  if (E == 0) return s;
  StructureCache& cache = structure_cache();
  std::lock_guard<std::mutex> lock(cache.mutex);
  cache.entries.insert(cache.entries.begin(), s);
  if (cache.entries.size() > kStructureCacheSize) cache.entries.resize(kStructureCacheSize);
  return s;
}

void clear_structure_cache() {
  std::vector<std::shared_ptr<const GraphStructure>> dropped;
  StructureCache& cache = structure_cache();
  std::lock_guard<std::mutex> lock(cache.mutex);
  dropped.swap(cache.entries);
}

double objective(const InstanceView& inst, const SimpleGraph& g, const Labelling& lab) {
  const int64_t K = inst.num_classes;
  double obj = 0.0;
  for (int32_t i = 0; i < g.num_nodes; ++i) obj += node_cost(inst, i * K + lab.label[i]);
  for (int32_t e = 0; e < g.num_edges(); ++e) {
    if (lab.cluster[g.u[e]] != lab.cluster[g.v[e]]) obj += g.w[e];
  }
  return obj;
}

namespace {

// objective() of two labellings in one pass (each sum in the same order as objective()'s).
void objectives(const InstanceView& inst, const SimpleGraph& g, const Labelling& a, const Labelling& b, double* obj_a,
                double* obj_b) {
  const int64_t K = inst.num_classes;
  double oa = 0.0, ob = 0.0;
  for (int32_t i = 0; i < g.num_nodes; ++i) {
    oa += node_cost(inst, i * K + a.label[i]);
    ob += node_cost(inst, i * K + b.label[i]);
  }
  for (int32_t e = 0; e < g.num_edges(); ++e) {
    const int32_t u = g.u[e], v = g.v[e];
    if (a.cluster[u] != a.cluster[v]) oa += g.w[e];
    if (b.cluster[u] != b.cluster[v]) ob += g.w[e];
  }
  *obj_a = oa;
  *obj_b = ob;
}

// Relabels clusters as connected components of the joined (uncut) edges, numbered 0.. in order
// of their first node. Nodes with equal cluster ids that are not connected become separate
// segments; the objective does not change because no edge joins them.
std::vector<int32_t> connected_segments(const SimpleGraph& g, const Labelling& lab) {
  const int32_t n = g.num_nodes;
  std::vector<int32_t> seg(n, -1);
  std::vector<int32_t> stack;
  int32_t next = 0;
  for (int32_t s = 0; s < n; ++s) {
    if (seg[s] >= 0) continue;
    seg[s] = next;
    stack.push_back(s);
    while (!stack.empty()) {
      const int32_t i = stack.back();
      stack.pop_back();
      for (int64_t p = g.offsets[i]; p < g.offsets[i + 1]; ++p) {
        const int32_t j = g.nbr[p];
        if (seg[j] < 0 && lab.cluster[j] == lab.cluster[i]) {
          seg[j] = next;
          stack.push_back(j);
        }
      }
    }
    ++next;
  }
  return seg;
}

// Renumbers cluster ids 0.. in order of their first node.
std::vector<int32_t> contiguous_ids(const std::vector<int32_t>& cluster) {
  const int32_t n = static_cast<int32_t>(cluster.size());
  int32_t max_id = -1;
  for (int32_t c : cluster) max_id = std::max(max_id, c);
  std::vector<int32_t> id_of(static_cast<size_t>(max_id) + 1, -1);
  std::vector<int32_t> out(n);
  int32_t next = 0;
  for (int32_t i = 0; i < n; ++i) {
    int32_t& id = id_of[cluster[i]];
    if (id < 0) id = next++;
    out[i] = id;
  }
  return out;
}

}  // namespace

Labelling initial_labelling(const InstanceView& inst, const SimpleGraph& g) {
  const int32_t n = g.num_nodes;
  Labelling lab;
  lab.label.assign(inst.initial_labels, inst.initial_labels + n);
  UnionFind uf;
  uf.reset(n);
  const int32_t* cl = inst.initial_clusters;
  for (int32_t e = 0; e < g.num_edges(); ++e) {
    const int32_t u = g.u[e], v = g.v[e];
    const int32_t k = lab.label[u];
    if (k != lab.label[v]) continue;
    if (cl != nullptr && inst.partitionable[k] && cl[u] != cl[v]) continue;
    const int32_t a = uf.find(u), b = uf.find(v);
    if (a != b) uf.merge_into(std::max(a, b), std::min(a, b));
  }
  lab.cluster.resize(n);
  for (int32_t i = 0; i < n; ++i) lab.cluster[i] = uf.find(i);  // a node id < N: valid for local search
  return lab;
}

}  // namespace detail

namespace {

// Widens n float32 values into dst[0, n); returns whether all are finite (checked on the float
// bits: exponent all ones is inf or NaN).
bool widen_scalar(const float* src, int64_t n, double* dst) {
  uint32_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, src + i, sizeof(u));
    bad |= static_cast<uint32_t>((u & 0x7f800000u) == 0x7f800000u);
    dst[i] = static_cast<double>(src[i]);
  }
  return bad == 0;
}

#if COPS_X86_DISPATCH
// The same with AVX2, 8 values per step (exact: every float32 is a double).
__attribute__((target("avx2"))) bool widen_avx2(const float* src, int64_t n, double* dst) {
  const __m256i exp_mask = _mm256_set1_epi32(0x7f800000);
  __m256i bad = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(src + i);
    const __m256i e = _mm256_and_si256(_mm256_castps_si256(v), exp_mask);
    bad = _mm256_or_si256(bad, _mm256_cmpeq_epi32(e, exp_mask));
    _mm256_storeu_pd(dst + i, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
    _mm256_storeu_pd(dst + i + 4, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
  }
  const bool ok = _mm256_testz_si256(bad, bad);
  return widen_scalar(src + i, n - i, dst + i) && ok;
}
#endif

// Widens n float32 values into dst (resized); returns whether all are finite.
bool widen(const float* src, int64_t n, std::vector<double>& dst) {
  dst.resize(static_cast<size_t>(n));
#if COPS_X86_DISPATCH
  if (detail::cpu_has_avx2()) return widen_avx2(src, n, dst.data());
#endif
  return widen_scalar(src, n, dst.data());
}

// True iff no float32 value is NaN or +-inf (branch-free, vectorisable).
bool all_finite(const float* x, int64_t n) {
  uint32_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, x + i, sizeof(u));
    bad |= static_cast<uint32_t>((u & 0x7f800000u) == 0x7f800000u);
  }
  return bad == 0;
}

// out[i] = round(round(delta[i] * scale) + base[i]) in T (no fused multiply-add: the build uses
// -ffp-contract=off), the order NumPy's `np.multiply(delta, scale); += base` rounds in.
template <class T>
void perturbed_costs(const T* base, const T* delta, T scale, int64_t n, std::vector<T>& out) {
  out.resize(static_cast<size_t>(n));
  T* o = out.data();
  for (int64_t i = 0; i < n; ++i) {
    const T t = delta[i] * scale;
    o[i] = t + base[i];
  }
}

// The instance with its node-cost perturbation (if any) applied into per-thread buffers.
// Throws InvalidInput for a non-finite scale. The delta has the costs' dtype (the bindings check
// it; see InstanceView).
InstanceView with_perturbation(const InstanceView& in) {
  InstanceView v = in;
  if (in.label_classes != nullptr) throw InvalidInput{"label_classes must be expanded before the solve"};
  if (in.node_delta_f32 == nullptr && in.node_delta == nullptr) return v;
  if (!std::isfinite(in.delta_scale)) throw InvalidInput{"the perturbation scale must be finite"};
  const int64_t n = in.num_nodes * in.num_classes;
  if (in.node_delta_f32 != nullptr && in.node_costs_f32 != nullptr) {
    thread_local std::vector<float> buf;
    perturbed_costs(in.node_costs_f32, in.node_delta_f32, static_cast<float>(in.delta_scale), n, buf);
    v.node_costs_f32 = buf.data();
  } else if (in.node_delta != nullptr && in.node_costs != nullptr) {
    thread_local std::vector<double> buf;
    perturbed_costs(in.node_costs, in.node_delta, in.delta_scale, n, buf);
    v.node_costs = buf.data();
  }
  v.node_delta = nullptr;
  v.node_delta_f32 = nullptr;
  return v;
}

// With keep_node_f32, finite float32 node costs stay float32 (node_costs null, node_costs_f32
// set, known finite): the solvers read them as they are, widening exactly where they use them.
// A node-cost perturbation is applied first.
InstanceView as_float64(const InstanceView& input, bool keep_node_f32 = false) {
  const InstanceView in = with_perturbation(input);
  InstanceView v = in;
  if (keep_node_f32 && in.node_costs == nullptr && in.node_costs_f32 != nullptr &&
      all_finite(in.node_costs_f32, in.num_nodes * in.num_classes)) {
    v.node_costs_known_finite = true;
  } else if (in.node_costs == nullptr && in.node_costs_f32 != nullptr) {
    thread_local std::vector<double> buf;
    v.node_costs_known_finite = widen(in.node_costs_f32, in.num_nodes * in.num_classes, buf);
    v.node_costs = buf.data();
    v.node_costs_f32 = nullptr;
  }
  if (in.edge_costs == nullptr && in.edge_costs_f32 != nullptr) {
    thread_local std::vector<double> buf;
    v.edge_costs_known_finite = widen(in.edge_costs_f32, in.num_edges, buf);
    v.edge_costs = buf.data();
  }
  v.edge_costs_f32 = nullptr;
  return v;
}

}  // namespace

void clear_graph_structure_cache() { detail::clear_structure_cache(); }

double labelling_objective(const InstanceView& input, const int32_t* node_labels, const int32_t* cluster_ids) {
  const InstanceView inst = as_float64(input);
  validate_instance(inst);
  const int64_t K = inst.num_classes;
  double obj = 0.0;
  for (int64_t i = 0; i < inst.num_nodes; ++i) obj += inst.node_costs[i * K + node_labels[i]];
  for (int64_t e = 0; e < inst.num_edges; ++e) {
    const int64_t u = inst.edges[2 * e], v = inst.edges[2 * e + 1];  // read once, checked again
    if (u < 0 || v < 0 || u >= inst.num_nodes || v >= inst.num_nodes) {
      throw InvalidInput{"edges changed while being read (another thread wrote the array during the call)"};
    }
    if (cluster_ids[u] != cluster_ids[v]) obj += inst.edge_costs[e];
  }
  return obj;
}

namespace {

// Solves one instance; `shared` (or null) is the structure of its edges, built by the batch
// solver for the instances that share one edges array (whose edges it has validated).
Solution solve_one(const InstanceView& input, const SolveOptions& opts, const detail::GraphStructure* shared) {
  using namespace detail;
  InstanceView inst = as_float64(input, /*keep_node_f32=*/true);
  // The structure of the edges: the batch's, a cached one (the same edges as a recent solve: no
  // validation of the edges needed), or built after validation (and cached).
  std::shared_ptr<const GraphStructure> structure;
  if (shared == nullptr) structure = find_structure(inst);
  if (shared != nullptr || structure != nullptr) inst.edges_known_valid = true;
  validate_instance(inst);
  if (shared == nullptr && structure == nullptr) structure = make_structure(inst);
  Solution sol;
  thread_local SimpleGraph g;  // buffers reused by the next solve on this thread
  attach_structure(shared != nullptr ? *shared : *structure, inst, g);
  const bool warm = inst.initial_labels != nullptr;
  const bool searched = opts.local_search && g.num_nodes > 0;
  // A warm start of a multiway cut (no partitionable class; the AMWC layer's backward) that the
  // local search improves needs no connected components up front: there every class is one
  // cluster (the local search gives its nodes the id N + class), an edge is cut iff its ends'
  // classes differ, so the classes serve as cluster ids; the segments are found at the end.
  bool classes_as_clusters = warm && searched;
  for (int64_t k = 0; k < inst.num_classes && classes_as_clusters; ++k) classes_as_clusters = !inst.partitionable[k];
  Labelling lab;
  if (classes_as_clusters) {
    lab.label.assign(inst.initial_labels, inst.initial_labels + g.num_nodes);
    lab.cluster = lab.label;
  } else {
    // Warm start: the given labelling (its clusters are connected components, like GAEC's).
    lab = warm ? initial_labelling(inst, g) : gaec(inst, g, &sol.gaec_contractions);
  }
  bool gaec_result = true;
  double gaec_objective = 0.0;
  Labelling improved;
  if (searched) {
    improved.label = lab.label;
    improved.cluster = lab.cluster;
    improved.node_min.swap(lab.node_min);  // GAEC's per-node minima, for the local search
    improved.cost_scale = lab.cost_scale;
    LocalSearchStats stats;
    sol.local_search_moves = local_search(inst, g, improved, opts, &stats);
    sol.local_search_rounds = stats.rounds;
    sol.incremental_cluster_passes = stats.incremental_passes;
    if (sol.local_search_moves > 0) {
      double improved_objective;
      objectives(inst, g, lab, improved, &gaec_objective, &improved_objective);
      // Keep the local-search result only if it is not worse (guards against rounding).
      if (improved_objective <= gaec_objective) {
        lab = std::move(improved);
        gaec_result = false;
      }
    }
  }
  // GAEC clusters are connected (built by contractions and merges along edges): their ids only
  // need renumbering. Local-search moves can disconnect a cluster: take connected components
  // (the local search's own when it left them).
  if (gaec_result && classes_as_clusters) {
    // Unchanged by the local search: its segments (of the same labelling) when it left them.
    sol.instance_ids = sol.local_search_moves == 0 && improved.segment.size() == static_cast<size_t>(g.num_nodes)
                           ? std::move(improved.segment)
                           : connected_segments(g, lab);
  } else if (gaec_result) {
    sol.instance_ids = contiguous_ids(lab.cluster);
  } else if (lab.segment.size() == static_cast<size_t>(g.num_nodes)) {
    sol.instance_ids = std::move(lab.segment);
  } else {
    sol.instance_ids = connected_segments(g, lab);
  }
  sol.node_labels = std::move(lab.label);
  // Edge labels and the objective, on the input edges, in one pass.
  const int64_t K = inst.num_classes;
  double obj = 0.0;
  for (int64_t i = 0; i < inst.num_nodes; ++i) obj += node_cost(inst, i * K + sol.node_labels[i]);
  sol.edge_labels.resize(inst.num_edges);
  const int32_t* ids = sol.instance_ids.data();
  const int32_t* edges = (shared != nullptr ? *shared : *structure).input_edges.data();  // validated
  for (int64_t e = 0; e < inst.num_edges; ++e) {
    const bool cut = ids[edges[2 * e]] != ids[edges[2 * e + 1]];
    sol.edge_labels[e] = cut ? 1 : 0;
    if (cut) obj += inst.edge_costs[e];
  }
  sol.objective = obj;
  sol.gaec_objective = gaec_result ? obj : gaec_objective;
  return sol;
}

}  // namespace

namespace {

// A relabelled perturbation (InstanceView::label_classes) expanded to the plain form: base [N, L]
// = c[:, label_classes] and delta [N, L] = delta rows transposed, zero from row M on. The N
// perturbed solves of an image share one expansion (solve_amwc_batch groups them).
struct Relabelled {
  std::vector<float> base32, delta32;
  std::vector<double> base64, delta64;
};

// Throws InvalidInput unless `in`'s label ids lie in [0, K). The sizes (1 <= L, 0 <= M <= L) and
// the delta's dtype (the costs') are the bindings' checks (see InstanceView).
void check_relabelling(const InstanceView& in) {
  for (int64_t l = 0; l < in.num_labels; ++l) {
    if (in.label_classes[l] < 0 || in.label_classes[l] >= in.num_classes)
      throw InvalidInput{"label_classes must hold class ids in [0, " + std::to_string(in.num_classes) + "); label " +
                         std::to_string(l) + " has " + std::to_string(in.label_classes[l])};
  }
}

// base[i, l] = c[i, cls[l]], delta[i, l] = rows[l, i] (l < M) or 0, in blocks of nodes whose
// [B, L] output stays in cache while the M rows are read along it.
template <class T>
void expand_relabelling(const T* c, const T* rows, int64_t n, int64_t K, const int64_t* cls, int64_t L, int64_t M,
                        std::vector<T>& base, std::vector<T>& delta) {
  base.resize(static_cast<size_t>(n * L));
  delta.resize(static_cast<size_t>(n * L));
  T* bo = base.data();
  T* d = delta.data();
  for (int64_t i = 0; i < n; ++i) {
    const T* ci = c + i * K;
    T* bi = bo + i * L;
    for (int64_t l = 0; l < L; ++l) bi[l] = ci[cls[l]];
  }
  constexpr int64_t kBlock = 64;
  for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
    const int64_t i1 = std::min(n, i0 + kBlock);
    for (int64_t l = 0; l < M; ++l) {
      const T* r = rows + l * n;
      for (int64_t i = i0; i < i1; ++i) d[i * L + l] = r[i];
    }
    for (int64_t i = i0; i < i1; ++i) std::fill(d + i * L + M, d + (i + 1) * L, T(0));
  }
}

// `in` with its relabelling expanded into `out`: the plain perturbation view of the L-label
// instance (node_costs = base [N, L], node_delta = delta [N, L], num_classes = L).
InstanceView expanded_view(const InstanceView& in, const Relabelled& out) {
  InstanceView v = in;
  v.num_classes = in.num_labels;
  if (in.node_costs_f32 != nullptr) {
    v.node_costs_f32 = out.base32.data();
    v.node_delta_f32 = out.delta32.data();
  } else {
    v.node_costs = out.base64.data();
    v.node_delta = out.delta64.data();
  }
  v.node_costs_known_finite = false;
  v.label_classes = nullptr;
  v.num_labels = 0;
  v.delta_rows = 0;
  return v;
}

void expand(const InstanceView& in, Relabelled& out) {
  if (in.node_costs_f32 != nullptr)
    expand_relabelling(in.node_costs_f32, in.node_delta_f32, in.num_nodes, in.num_classes, in.label_classes,
                       in.num_labels, in.delta_rows, out.base32, out.delta32);
  else
    expand_relabelling(in.node_costs, in.node_delta, in.num_nodes, in.num_classes, in.label_classes, in.num_labels,
                       in.delta_rows, out.base64, out.delta64);
}

}  // namespace

Solution solve_amwc(const InstanceView& input, const SolveOptions& opts) {
  if (input.label_classes == nullptr) return solve_one(input, opts, nullptr);
  check_relabelling(input);
  Relabelled r;
  expand(input, r);
  return solve_one(expanded_view(input, r), opts, nullptr);
}

std::vector<Solution> solve_amwc_batch(const std::vector<InstanceView>& inputs, const SolveOptions& opts,
                                       int num_threads) {
  std::vector<Solution> out(inputs.size());
  if (num_threads <= 0) num_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  std::vector<std::string> invalid(inputs.size());
  std::vector<uint8_t> failed(inputs.size(), 0);
  std::exception_ptr error;
  std::mutex error_mutex;

  // Relabelled perturbations: the instances with the same costs, delta rows and label classes
  // (the N perturbed solves of one image of the AMWC layer's backward) share one expansion to
  // [N, L] arrays, built once per group (in parallel over the groups); the instances then take
  // the plain (delta, scale) form, whose perturbed costs each solve forms on its thread.
  std::vector<InstanceView> insts(inputs);
  // Kept by the calling thread between calls (like the per-thread solver buffers): arrays of the
  // same size are then reused instead of page-faulted anew at every backward step.
  // (Through a reference: the worker threads' lambdas must see this thread's instance.)
  thread_local std::vector<Relabelled> kept;
  std::vector<Relabelled>& expanded = kept;
  {
    // (by the ids, not their address: the bindings hold a copy of them per instance)
    std::map<std::tuple<const void*, const void*, std::vector<int64_t>, int64_t, int64_t, int64_t>, size_t> index;
    std::vector<size_t> first;            // first instance of each group
    std::vector<int64_t> group_of(inputs.size(), -1);
    for (size_t b = 0; b < inputs.size(); ++b) {
      const InstanceView& in = inputs[b];
      if (in.label_classes == nullptr) continue;
      try {
        check_relabelling(in);
      } catch (const InvalidInput& err) {
        invalid[b] = err.message;
        failed[b] = 1;
        continue;
      }
      const void* c = in.node_costs_f32 != nullptr ? static_cast<const void*>(in.node_costs_f32) : in.node_costs;
      const void* d = in.node_delta_f32 != nullptr ? static_cast<const void*>(in.node_delta_f32) : in.node_delta;
      auto key = std::make_tuple(c, d, std::vector<int64_t>(in.label_classes, in.label_classes + in.num_labels),
                                 in.delta_rows, in.num_nodes, in.num_classes);
      auto it = index.emplace(std::move(key), first.size()).first;
      if (it->second == first.size()) first.push_back(b);
      group_of[b] = static_cast<int64_t>(it->second);
    }
    if (expanded.size() < first.size()) expanded.resize(first.size());
    std::vector<uint8_t> expanded_ok(first.size(), 0);
    detail::parallel_for(first.size(), num_threads, [&](size_t g) {
      try {
        expand(inputs[first[g]], expanded[g]);
        expanded_ok[g] = 1;
      } catch (...) {  // out of memory: reported below
      }
    });
    for (size_t b = 0; b < inputs.size(); ++b) {
      if (group_of[b] < 0) continue;
      if (!expanded_ok[group_of[b]]) throw std::bad_alloc();
      insts[b] = expanded_view(inputs[b], expanded[group_of[b]]);
    }
  }

  // Instances with the same edges array (the same pointer, edge and node counts) share one graph
  // structure, checked and built once (in parallel over the groups); the costs stay per instance.
  // A group whose edges are invalid is left to the per-instance path, which names the error.
  std::vector<int32_t> group_of(insts.size(), -1);
  std::vector<size_t> group_first;  // first instance of each group
  {
    std::map<std::tuple<const int64_t*, int64_t, int64_t>, int32_t> index;
    std::vector<int32_t> count;
    for (size_t b = 0; b < insts.size(); ++b) {
      if (insts[b].num_edges <= 0) continue;
      const auto key = std::make_tuple(insts[b].edges, insts[b].num_edges, insts[b].num_nodes);
      auto it = index.emplace(key, static_cast<int32_t>(group_first.size())).first;
      if (it->second == static_cast<int32_t>(group_first.size())) {
        group_first.push_back(b);
        count.push_back(0);
      }
      group_of[b] = it->second;
      ++count[it->second];
    }
    for (size_t b = 0; b < insts.size(); ++b) {
      if (group_of[b] >= 0 && count[group_of[b]] < 2) group_of[b] = -1;  // nothing to share
    }
  }
  std::vector<std::shared_ptr<const detail::GraphStructure>> structures(group_first.size());
  std::vector<size_t> to_build;
  {
    std::vector<uint8_t> used(group_first.size(), 0);
    for (int32_t g : group_of)
      if (g >= 0) used[g] = 1;
    for (size_t g = 0; g < group_first.size(); ++g)
      if (used[g]) to_build.push_back(g);
  }
  detail::parallel_for(to_build.size(), num_threads, [&](size_t i) {
    const size_t g = to_build[i];
    const InstanceView& f = insts[group_first[g]];
    try {
      structures[g] = detail::find_structure(f);
      if (structures[g] != nullptr) return;
      if (f.num_nodes < 0 || f.num_nodes > INT32_MAX - 1 || f.num_edges > INT32_MAX - 1 || !edges_valid(f)) return;
      structures[g] = detail::make_structure(f);
    } catch (...) {  // e.g. out of memory: the instances take the per-instance path
      structures[g] = nullptr;
    }
  });

  detail::parallel_for(insts.size(), num_threads, [&](size_t b) {
    if (failed[b]) return;  // an invalid relabelling, reported below
    try {
      const int32_t g = group_of[b];
      out[b] = solve_one(insts[b], opts, g >= 0 ? structures[g].get() : nullptr);
    } catch (const InvalidInput& err) {
      invalid[b] = err.message;
      failed[b] = 1;
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
    }
  });
  for (size_t b = 0; b < insts.size(); ++b) {
    if (failed[b]) throw InvalidInput{"instance " + std::to_string(b) + ": " + invalid[b]};
  }
  if (error) std::rethrow_exception(error);
  return out;
}

}  // namespace cops
