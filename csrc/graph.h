// Internal graph structures shared by GAEC and the local search.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "amwc.h"

namespace cops {
namespace detail {

// A read-only view of a contiguous array (the graph's arrays live either in the graph itself or
// in a GraphStructure shared by the instances of a batch that have the same edges).
template <class T>
struct ConstSpan {
  const T* ptr = nullptr;
  size_t len = 0;
  const T& operator[](size_t i) const { return ptr[i]; }
  const T* data() const { return ptr; }
  size_t size() const { return len; }
  const T* begin() const { return ptr; }
  const T* end() const { return ptr + len; }
};

// The edge structure of an instance, independent of its costs: duplicate input edges merged,
// (i, j) and (j, i) the same edge, and how the input edges' costs are summed onto the unique
// edges. Instances with the same edges array (the N perturbed solves of one image in the
// backward, every image of a batch on one grid) share one structure.
struct GraphStructure {
  int32_t num_nodes = 0;
  std::vector<int32_t> u, v;          // [Eu] endpoints, u < v
  // CSR adjacency over unique edges, both directions.
  std::vector<int64_t> offsets;       // [N + 1]
  std::vector<int32_t> nbr;           // [2 Eu] neighbour node
  std::vector<int32_t> eid;           // [2 Eu] unique edge id
  // Summation plan: for p = 0..E-1, input edge order[p] adds its cost to unique edge
  // target[p] (stored as ~id for the first input edge of a unique edge, which sets the sum).
  std::vector<int32_t> order, target;

  int32_t num_edges() const { return static_cast<int32_t>(u.size()); }

  // The input edges it was built from ([2 E], as given; valid node ids fit int32): what the
  // solve reads instead of the caller's array, and the cache's exact comparison (find_structure).
  std::vector<int32_t> input_edges;
};

// Builds the structure of the `E` edges `edges` ([2 E], valid node ids in [0, n), no self-loops)
// into `s`. O(N + E), deterministic.
void build_graph_structure(const int32_t* edges, int64_t E, int32_t n, GraphStructure& s);

// Process-wide cache of the structures of the last kStructureCacheSize distinct edge sets
// (training and inference solve on one grid per image size, call after call). A structure is
// reused only for an instance whose node count and edges array equal, entry by entry, the ones
// it was built from (one vectorised pass over the edges, a small part of a build); a cached
// structure is never modified, so solves on several threads share it.
constexpr size_t kStructureCacheSize = 2;

// The cached structure of `inst`'s edges, or null. Needs no validation of the edges: a match
// means they are the ones validated when the structure was built.
std::shared_ptr<const GraphStructure> find_structure(const InstanceView& inst);

// Builds the structure of `inst`'s edges (validated before; read once, into `input_edges`, and
// checked again there, so a concurrent write to the caller's array cannot index out of range)
// and caches it (evicting the least recently used entry); instances without edges are not cached.
std::shared_ptr<const GraphStructure> make_structure(const InstanceView& inst);

// Drops every cached structure (the memory goes once no running solve uses it).
void clear_structure_cache();

// Simple undirected graph of one instance: a structure (its own or a shared one) and the summed
// costs of the unique edges.
struct SimpleGraph {
  int32_t num_nodes = 0;
  ConstSpan<int32_t> u, v;            // [Eu] endpoints, u < v
  ConstSpan<int64_t> offsets;         // [N + 1]
  ConstSpan<int32_t> nbr;             // [2 Eu] neighbour node
  ConstSpan<int32_t> eid;             // [2 Eu] unique edge id
  std::vector<double> w;              // [Eu] summed costs

  int32_t num_edges() const { return static_cast<int32_t>(u.size()); }
};

// Points `g` at structure `s` (which must outlive the use of `g`) and sums `inst`'s edge costs
// onto its unique edges in the plan's order (so the sums are the same whichever way the
// structure was obtained).
void attach_structure(const GraphStructure& s, const InstanceView& inst, SimpleGraph& g);

// Union-find with path halving; `merge_into(child, root)` makes `root` the representative.
struct UnionFind {
  std::vector<int32_t> parent;
  void reset(int32_t n) {
    parent.resize(n);
    for (int32_t i = 0; i < n; ++i) parent[i] = i;
  }
  int32_t find(int32_t x) {
    while (parent[x] != x) {
      parent[x] = parent[parent[x]];
      x = parent[x];
    }
    return x;
  }
  void merge_into(int32_t child_root, int32_t root) { parent[child_root] = root; }
};

// Per-node state handed from GAEC to the local search: a class per node and a cluster id per
// node (two nodes are joined iff their cluster ids are equal).
struct Labelling {
  std::vector<int32_t> label;    // [N]
  std::vector<int32_t> cluster;  // [N]
  // Optional (empty when unknown): [N] connected segments of the joined edges, numbered 0.. in
  // order of their first node, as connected_segments in graph.cpp numbers them. The local search
  // leaves them here when its last round found them for the final state.
  std::vector<int32_t> segment;
  // Optional, from GAEC's first pass over the costs (empty / 0 when unknown; the local search
  // then computes them): [N] min_k c_V(i, k), and max(1, max |c_V|, max |summed edge cost|).
  std::vector<double> node_min;
  double cost_scale = 0.0;
};

// The solvers below keep per-thread buffers between calls (they are not re-entrant on one thread).

// GAEC for AMWC followed by the final merge of adjacent same-class non-partitionable clusters.
Labelling gaec(const InstanceView& inst, const SimpleGraph& g, int64_t* num_contractions);

// The warm-start labelling of `inst.initial_labels` / `inst.initial_clusters` (see InstanceView):
// clusters = connected components of the joined edges, each named by its smallest node id.
Labelling initial_labelling(const InstanceView& inst, const SimpleGraph& g);

struct LocalSearchStats {
  int64_t rounds = 0;              // node-move + cluster-move rounds
  int64_t incremental_passes = 0;  // cluster passes that updated the previous pass's segments
};

// Improves `lab` in place by node and cluster moves (opts.max_local_search_rounds,
// opts.incremental_cluster_passes); returns the number of moves applied.
int64_t local_search(const InstanceView& inst, const SimpleGraph& g, Labelling& lab, const SolveOptions& opts,
                     LocalSearchStats* stats);

// Objective on the simple graph (same value as on the input edges).
double objective(const InstanceView& inst, const SimpleGraph& g, const Labelling& lab);

}  // namespace detail
}  // namespace cops
