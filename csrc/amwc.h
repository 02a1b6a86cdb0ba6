// Asymmetric multiway cut (AMWC) and multiway cut (MWC) solvers of detectron2-cops.
//
// Problem (Kroeger et al. 2014, "Asymmetric cuts: joint image labeling and partitioning"; COPS,
// Abbas & Swoboda 2021, Sec. 3.1):
//
//   min_{x, y}  sum_i c_V(i, x(i)) + sum_{ij} c_E(ij) y(ij)
//   s.t.        y(ij) = 1  if x(i) != x(j)
//               y(ij) = 0  if x(i) == x(j) and x(i) is not partitionable
//               y is a valid clustering (no cut edge inside a cluster)
//
// A positive edge cost favours joining the two nodes, a negative one favours cutting.
// MWC is the special case where no class is partitionable.
//
// All algorithmic state lives in plain structs; nothing here depends on Python or PyTorch.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace cops {

// A read-only view of one instance. Arrays are C-contiguous and owned by the caller, who
// guarantees the sizes and dtypes stated below (the bindings check them: array lengths,
// node_delta of the node costs' dtype, 1 <= num_labels, 0 <= delta_rows <= num_labels, a
// node_delta with label_classes); the solvers check the values (validate_instance, the label
// ids of a relabelling, the perturbation scale).
// Costs are float64 (`node_costs`, `edge_costs`) or float32 (`node_costs_f32`, `edge_costs_f32`,
// with the float64 pointer null); float32 edge costs are widened inside the solver, on the worker
// thread, into reused buffers; float32 node costs are read as they are by GAEC and the local
// search (widened exactly where used; all sums are double).
struct InstanceView {
  int64_t num_nodes = 0;      // N
  int64_t num_classes = 0;    // K
  int64_t num_edges = 0;      // E (input edges, duplicates allowed)
  const double* node_costs = nullptr;      // [N, K] row-major
  const int64_t* edges = nullptr;          // [E, 2]
  const double* edge_costs = nullptr;      // [E]
  const uint8_t* partitionable = nullptr;  // [K], 1 = partitionable (thing) class
  const float* node_costs_f32 = nullptr;   // [N, K] row-major, when node_costs is null
  const float* edge_costs_f32 = nullptr;   // [E], when edge_costs is null
  // Set when the costs were already found finite (while widening them); validation skips them.
  bool node_costs_known_finite = false;
  bool edge_costs_known_finite = false;
  // Set when the edges were already found valid (node ids in range, no self-loops; the batch
  // solver checks an edges array shared by several instances once); validation skips them.
  bool edges_known_valid = false;
  // Optional warm start: an initial labelling to start the local search from instead of GAEC
  // (null: GAEC from singletons). `initial_labels` [N], a class in [0, K) per node;
  // `initial_clusters` [N] (optional, any int32 ids): two adjacent nodes start joined iff they
  // have the same class and, for a partitionable class, the same cluster id (null: the same
  // class suffices). Adjacent nodes of one non-partitionable class are always joined, so the
  // start is feasible.
  const int32_t* initial_labels = nullptr;
  const int32_t* initial_clusters = nullptr;
  // Optional perturbation of the node costs (the AMWC layer's backward, COPS Sec. 3.4): the
  // instance's node costs are c + scale * delta, delta [N, K] of the node costs' dtype
  // (`node_delta` with float64 costs, `node_delta_f32` with float32 ones), computed elementwise
  // in that dtype as round(round(delta * scale) + c) on the solving thread into a reused buffer,
  // so that N perturbed instances of one image need no [N, K] array each.
  const double* node_delta = nullptr;
  const float* node_delta_f32 = nullptr;
  double delta_scale = 0.0;
  // Optional relabelling with that perturbation (the backward's multiway cut, COPS Sec. 3.5:
  // one label per segment, then one per class without a segment): with `label_classes`
  // [num_labels] (class ids in [0, K)), the instance solved has num_labels labels (num_classes
  // of the solved view; `partitionable` then has num_labels entries) with node costs
  // c[i, label_classes[l]] + scale * delta[l, i] for l < delta_rows and c[i, label_classes[l]]
  // + (0 * scale) otherwise, each in the costs' dtype as round(round(delta * scale) + c): the
  // delta is given label-major [delta_rows, N] (the layout of the mask gradient), not [N, K].
  // solve_amwc_batch expands it to [N, L] base and delta arrays once for all instances that share
  // the costs, delta and label_classes arrays (the N perturbed solves of an image).
  const int64_t* label_classes = nullptr;
  int64_t num_labels = 0;
  int64_t delta_rows = 0;
};

struct SolveOptions {
  bool local_search = true;  // run the local-search pass after GAEC
  int max_local_search_rounds = 50;  // alternations of node moves and cluster moves
  // A cluster pass after one that moved segments, with no node move in between, updates that
  // pass's segments (merges) and evaluates only the segments next to a move, instead of
  // rebuilding all segments: the same moves (off: every pass rebuilds; for tests and timing).
  bool incremental_cluster_passes = true;
};

struct Solution {
  std::vector<int32_t> node_labels;   // [N] class per node
  std::vector<int32_t> instance_ids;  // [N] contiguous cluster ids (connected segments)
  std::vector<uint8_t> edge_labels;   // [E] per input edge, 1 = cut
  double objective = 0.0;
  // objective after GAEC (+ final merge), or of the initial labelling when warm-started, before
  // local search
  double gaec_objective = 0.0;
  int64_t gaec_contractions = 0;
  int64_t local_search_moves = 0;
  int64_t local_search_rounds = 0;          // node-move + cluster-move rounds run
  int64_t incremental_cluster_passes = 0;   // of their cluster passes, the incremental ones
};

// Thrown on invalid input; the bindings turn it into a Python ValueError.
struct InvalidInput {
  std::string message;
};

// Validates a float64 instance (ranges, self-loops, finite costs with |c| < 2^960). Throws
// InvalidInput.
void validate_instance(const InstanceView& inst);

// Validates and solves one AMWC instance with GAEC (+ optional local search), or, when
// `inst.initial_labels` is set, with local search from that labelling (never worse than it).
// Throws InvalidInput.
Solution solve_amwc(const InstanceView& inst, const SolveOptions& opts);

// Solves a batch of instances on `num_threads` threads (<= 0: hardware concurrency) of a
// persistent pool. If instances are invalid, throws InvalidInput for the first of them (message
// prefixed with "instance <b>: ").
std::vector<Solution> solve_amwc_batch(const std::vector<InstanceView>& insts, const SolveOptions& opts,
                                       int num_threads);

// The solvers keep the graph structures of the last few distinct edge sets they solved on (see
// detail::find_structure in graph.h); this drops them (memory is freed once no solve uses it).
void clear_graph_structure_cache();

// Objective of a labelling of a float64 instance given per-node classes and cluster ids (edge cut
// iff cluster ids differ).
double labelling_objective(const InstanceView& inst, const int32_t* node_labels, const int32_t* cluster_ids);

}  // namespace cops
