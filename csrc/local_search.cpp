// Local search for the AMWC after GAEC.
//
// State: a class per node and a cluster id per node; an edge is cut iff its endpoints' cluster
// ids differ. All nodes of one non-partitionable (stuff) class k share the cluster id N + k, so
// the AMWC constraint "adjacent nodes of one stuff class are never separated" holds by
// construction and every state is feasible. Thing clusters keep the ids GAEC gave them (node ids
// < N) or fresh ids >= N + K.
//
// Two kinds of moves, applied while they lower the objective by more than a tolerance:
//  * node moves: a node on a cluster boundary joins a neighbouring cluster (taking its class), or
//    its cheapest class as a new cluster (joining that class's stuff cluster if stuff);
//  * cluster moves: a whole segment (connected component of joined edges) joins a neighbouring
//    cluster, or is relabelled to its cheapest class as a cluster of its own.
// Phases alternate until a round applies no move. Each move strictly lowers the objective, so the
// search terminates and never ends worse than where it started.
#include <algorithm>
#include <cmath>
#include <iterator>
#include <limits>
#include <utility>

#include "graph.h"
#include "adjacency.h"  // COPS_PREFETCH
#include "simd.h"

namespace cops {
namespace detail {

namespace {

// S[comp[i] * K + k] += costs[i * K + k] for the nodes i = 0..n-1 in order (each entry's
// additions in node order, in double; float32 costs widened exactly).
template <class T>
void segment_sums_scalar(const T* costs, const int32_t* comp, int32_t n, int32_t K, double* S) {
  for (int32_t i = 0; i < n; ++i) {
    double* sc = S + static_cast<size_t>(comp[i]) * K;
    const T* nc = costs + static_cast<size_t>(i) * K;
    for (int32_t k = 0; k < K; ++k) sc[k] += nc[k];
  }
}

#if COPS_X86_DISPATCH
// The same with AVX2, 4 classes per step: the same additions (a lane per class), so the same sums.

template <class T>
__attribute__((target("avx2"))) void segment_sums_avx2(const T* costs, const int32_t* comp, int32_t n, int32_t K,
                                                       double* S) {
  for (int32_t i = 0; i < n; ++i) {
    double* sc = S + static_cast<size_t>(comp[i]) * K;
    const T* nc = costs + static_cast<size_t>(i) * K;
    int32_t k = 0;
    for (; k + 4 <= K; k += 4) _mm256_storeu_pd(sc + k, _mm256_add_pd(_mm256_loadu_pd(sc + k), load4(nc + k)));
    for (; k < K; ++k) sc[k] += nc[k];
  }
}
#endif

template <class T>
void segment_sums(const T* costs, const int32_t* comp, int32_t n, int32_t K, double* S) {
#if COPS_X86_DISPATCH
  if (K >= 8 && cpu_has_avx2()) return segment_sums_avx2(costs, comp, n, K, S);
#endif
  segment_sums_scalar(costs, comp, n, K, S);
}

// segment_sums restricted to the nodes i whose segment root[comp[i]] has flag set (the same
// additions, in node order, for those segments).
template <class T>
void segment_sums_where(const T* costs, const int32_t* comp, const int32_t* root, const uint8_t* flag, int32_t n,
                        int32_t K, double* S) {
  for (int32_t i = 0; i < n; ++i) {
    const int32_t c = root[comp[i]];
    if (!flag[c]) continue;
    double* sc = S + static_cast<size_t>(c) * K;
    const T* nc = costs + static_cast<size_t>(i) * K;
    for (int32_t k = 0; k < K; ++k) sc[k] += nc[k];
  }
}

// Reusable state: one instance per thread keeps its buffers between solves. T: the type of the
// input class costs (float32 input is read as it is and widened exactly where it is used).
template <class T>
class LocalSearch {
 public:
  int64_t run(const InstanceView& inst, const T* node_costs, const SimpleGraph& g, Labelling& lab,
              const SolveOptions& opts, LocalSearchStats* stats) {
    inst_ = &inst;
    in_ = node_costs;
    g_ = &g;
    lab_ = &lab;
    n_ = g.num_nodes;
    K_ = static_cast<int32_t>(inst.num_classes);
    init();
    return search(opts.max_local_search_rounds, opts.incremental_cluster_passes, stats);
  }

 private:
  void init() {
    const InstanceView& inst = *inst_;
    const SimpleGraph& g = *g_;
    // One pass over the node costs: the tolerance scale and each node's cheapest class cost
    // (the lower bound that lets node moves skip the O(K) class loop, see best_move).
    // GAEC hands them over from its own pass over the costs (a warm start does not).
    double scale = 1.0;
    if (lab_->node_min.size() == static_cast<size_t>(n_) && lab_->cost_scale > 0.0) {
      node_min_.swap(lab_->node_min);
      scale = lab_->cost_scale;
    } else {
      node_min_.resize(n_);
      for (int32_t i = 0; i < n_; ++i) {
        double absmax;
        row_min_absmax(in_ + static_cast<size_t>(i) * K_, K_, &node_min_[i], &absmax);
        scale = std::max(scale, absmax);
      }
      for (double w : g.w) scale = std::max(scale, std::abs(w));
    }
    lab_->node_min.clear();
    lab_->cost_scale = 0.0;
    tol_ = 1e-9 * scale;
    // Canonical ids: stuff nodes -> N + class; thing clusters keep their GAEC id.
    for (int32_t i = 0; i < n_; ++i) {
      if (!inst.partitionable[lab_->label[i]]) lab_->cluster[i] = n_ + lab_->label[i];
    }
    next_id_ = n_ + K_;
    cluster_label_.assign(next_id_, -1);
    for (int32_t k = 0; k < K_; ++k) cluster_label_[n_ + k] = k;
    for (int32_t i = 0; i < n_; ++i) cluster_label_[lab_->cluster[i]] = lab_->label[i];
    mark_.assign(next_id_, -1);
  }

  int64_t search(int max_rounds, bool incremental, LocalSearchStats* stats) {
    // The first round evaluates every node; later ones only the nodes of segments that a cluster move
    // changed (and their neighbours): elsewhere the node moves have already converged.
    std::vector<int32_t>& seeds = seeds_;
    seeds.resize(n_);
    for (int32_t i = 0; i < n_; ++i) seeds[i] = i;
    int64_t total = 0;
    lab_->segment.clear();
    bool segments_current = false;  // the segments of the last cluster pass, after its moves
    for (int round = 0; round < max_rounds; ++round) {
      const int64_t node_moved = node_moves(seeds);
      total += node_moved;
      seeds.clear();
      // Without node moves since, the last pass's segments (updated by its moves) are current.
      const bool update = incremental && segments_current && node_moved == 0;
      const int64_t moved = cluster_moves(&seeds, update);
      segments_current = true;
      ++stats->rounds;
      stats->incremental_passes += update ? 1 : 0;
      total += moved;
      if (moved == 0) {
        // The round's segments (numbered by first node) describe the final state.
        final_segments(lab_->segment);
        break;
      }
    }
    return total;
  }

  double cost(int32_t i, int32_t k) const { return in_[static_cast<size_t>(i) * K_ + k]; }

  int32_t new_cluster_id(int32_t k) {
    if (!inst_->partitionable[k]) return n_ + k;
    const int32_t id = next_id_++;
    cluster_label_.push_back(k);
    mark_.push_back(-1);
    return id;
  }

  // Accumulates, for the neighbours of node i, the summed edge cost per neighbouring cluster into
  // cand_ids_ / cand_w_; mark_[cluster] holds the slot until clear_marks().
  // A node has few neighbouring clusters (often one or two), so the slots are found by a scan of
  // the candidates so far (in registers / L1) rather than through mark_ per neighbour; the marks
  // are set once per candidate afterwards. The same sums in the same order as add_candidate.
  void gather_node(int32_t i) {
    cand_ids_.clear();
    cand_w_.clear();
    const int32_t* cluster = lab_->cluster.data();
    const int32_t* nbr = g_->nbr.data();
    const int32_t* eid = g_->eid.data();
    const double* w = g_->w.data();
    for (int64_t p = g_->offsets[i]; p < g_->offsets[i + 1]; ++p) {
      const int32_t t = cluster[nbr[p]];
      const double wp = w[eid[p]];
      size_t c = 0;
      const size_t n = cand_ids_.size();
      while (c < n && cand_ids_[c] != t) ++c;
      if (c == n) {
        cand_ids_.push_back(t);
        cand_w_.push_back(wp);
      } else {
        cand_w_[c] += wp;
      }
    }
    for (size_t c = 0; c < cand_ids_.size(); ++c) mark_[cand_ids_[c]] = static_cast<int32_t>(c);
  }

  void add_candidate(int32_t cluster, double w) {
    int32_t& slot = mark_[cluster];
    if (slot < 0) {
      slot = static_cast<int32_t>(cand_ids_.size());
      cand_ids_.push_back(cluster);
      cand_w_.push_back(w);
    } else {
      cand_w_[slot] += w;
    }
  }

  void clear_marks() {
    for (int32_t c : cand_ids_) mark_[c] = -1;
  }

  double weight_to(int32_t cluster) const {
    const int32_t slot = mark_[cluster];
    return slot < 0 ? 0.0 : cand_w_[slot];
  }

  // Best move of a unit (a node or a segment) whose class costs are `unit_cost(k)`, currently in
  // cluster `own` with class `own_label`, given the summed edge costs to the neighbouring clusters
  // (gathered in cand_ids_ / cand_w_ with marks set). Candidates: join a neighbouring thing
  // cluster; take any class k as a new cluster (thing) or join the cluster of stuff class k.
  // Returns the target cluster id (-2: a new thing cluster of class *new_class; -1: no
  // improving move) and writes the change of the objective to *delta.
  //
  // `unit_min` <= min_k unit_cost(k) (or -inf): every class-loop move has
  // delta >= (unit_min - w_max) - base with w_max the largest positive edge cost to a neighbouring
  // stuff cluster, so when that bound does not beat the best move so far the loop is skipped. The
  // bound holds in floating point too (subtraction rounds monotonically), so the result is the
  // same as with the loop.
  template <class CostFn>
  int32_t best_move(CostFn&& unit_cost, double unit_min, int32_t own, int32_t own_label, double* delta,
                    int32_t* new_class) const {
    const double base = unit_cost(own_label) - weight_to(own);
    double best_delta = -tol_;
    int32_t best_target = -1;
    double w_max = 0.0;
    for (size_t c = 0; c < cand_ids_.size(); ++c) {
      const int32_t t = cand_ids_[c];
      if (t == own) continue;
      if (t >= n_ && t < n_ + K_) {  // stuff clusters: in the class loop
        w_max = cand_w_[c] > w_max ? cand_w_[c] : w_max;
        continue;
      }
      // The same bound per candidate: unit_min in place of its class cost (skips a cache miss
      // on the node's cost row when the move cannot win).
      if (!((unit_min - cand_w_[c]) - base < best_delta)) continue;
      const double d = unit_cost(cluster_label_[t]) - cand_w_[c] - base;
      if (d < best_delta) {
        best_delta = d;
        best_target = t;
      }
    }
    if (!((unit_min - w_max) - base < best_delta)) {
      *delta = best_delta;
      return best_target;
    }
    for (int32_t k = 0; k < K_; ++k) {
      if (inst_->partitionable[k]) {
        const double d = unit_cost(k) - base;
        if (d < best_delta) {
          best_delta = d;
          best_target = -2;
          *new_class = k;
        }
      } else {
        const int32_t t = n_ + k;
        if (t == own) continue;
        const double d = unit_cost(k) - weight_to(t) - base;
        if (d < best_delta) {
          best_delta = d;
          best_target = t;
        }
      }
    }
    *delta = best_delta;
    return best_target;
  }

  int64_t node_moves(const std::vector<int32_t>& seeds) {
    // FIFO of the nodes to evaluate: a ring of N slots (a node is queued at most once at a time).
    std::vector<int32_t>& ring = queue_;
    ring.resize(static_cast<size_t>(n_));
    size_t head = 0, count = 0;
    const size_t cap = static_cast<size_t>(n_);
    queued_.assign(n_, 0);
    std::vector<uint8_t>& queued = queued_;
    for (int32_t i : seeds) {
      if (!queued[i]) {
        queued[i] = 1;
        ring[count++] = i;
      }
    }
    int64_t moves = 0;
    const int64_t max_moves = 64 * static_cast<int64_t>(n_) + 1024;
    constexpr size_t kAhead = 8;
    while (count > 0 && moves < max_moves) {
      const int32_t i = ring[head];
      head = head + 1 == cap ? 0 : head + 1;
      --count;
      queued[i] = 0;
      if (count > kAhead) {
        // The node evaluated kAhead steps later reads its cost at its current class first
        // (a cache miss on a row of the [N, K] costs otherwise).
        const size_t q = head + kAhead < cap ? head + kAhead : head + kAhead - cap;
        const int32_t j = ring[q];
        COPS_PREFETCH(&in_[static_cast<size_t>(j) * K_ + lab_->label[j]]);
      }
      const int32_t own = lab_->cluster[i];
      const int32_t own_label = lab_->label[i];
      gather_node(i);
      double best_delta;
      int32_t best_new_class = -1;
      const int32_t best_target = best_move([&](int32_t k) { return cost(i, k); }, node_min_[i], own, own_label,
                                            &best_delta, &best_new_class);
      clear_marks();
      if (best_target == -1) continue;
      const int32_t target = best_target == -2 ? new_cluster_id(best_new_class) : best_target;
      lab_->cluster[i] = target;
      lab_->label[i] = cluster_label_[target];
      ++moves;
      for (int64_t p = g_->offsets[i]; p < g_->offsets[i + 1]; ++p) {
        const int32_t j = g_->nbr[p];
        if (!queued[j]) {
          queued[j] = 1;
          const size_t tail = head + count < cap ? head + count : head + count - cap;
          ring[tail] = j;
          ++count;
        }
      }
    }
    return moves;
  }

  // Segments of the current state: connected components of the joined edges (union-find over the
  // edges; an edge is cut iff its endpoints' cluster ids differ), numbered by first node, with
  // their summed class costs, first node and cut-edge lists. Cluster moves then merge segments
  // (apply_moves); the smallest id of a union represents it, so live ids stay in first-node order
  // and the numbering is the one this function would give the new state.
  void build_segments() {
    UnionFind& uf = uf_;
    uf.reset(n_);
    std::vector<int32_t>& cut_edges = cut_edges_;
    cut_edges.clear();
    const int32_t* cluster = lab_->cluster.data();
    // The simple graph lists its edges by their smaller end (u ascending, about E / N edges per
    // u), so the root of u is found once per run of its edges and kept current through the
    // merges (the smaller root absorbs the larger): the same sets as a find per edge.
    int32_t run_u = -1, root_u = -1;
    for (int32_t e = 0; e < g_->num_edges(); ++e) {
      const int32_t u = g_->u[e], v = g_->v[e];
      if (cluster[u] != cluster[v]) {
        cut_edges.push_back(e);
        continue;
      }
      if (u != run_u) {
        run_u = u;
        root_u = uf.find(u);
      }
      const int32_t b = uf.find(v);
      if (root_u != b) {
        uf.merge_into(std::max(root_u, b), std::min(root_u, b));
        root_u = std::min(root_u, b);
      }
    }
    std::vector<int32_t>& comp = comp_;
    comp.assign(n_, -1);
    int32_t num_comp = 0;
    for (int32_t i = 0; i < n_; ++i) {
      const int32_t r = uf.find(i);
      if (comp[r] < 0) comp[r] = num_comp++;
      comp[i] = comp[r];
    }
    num_seg_ = num_comp;
    seg_root_.resize(num_comp);
    for (int32_t c = 0; c < num_comp; ++c) seg_root_[c] = c;
    seg_uf_.reset(num_comp);
    merged_ = false;
    if (num_comp <= 1) return;

    // Summed class costs and first node per segment.
    S_.assign(static_cast<size_t>(num_comp) * K_, 0.0);
    segment_sums(in_, comp.data(), n_, K_, S_.data());
    first_.assign(num_comp, -1);
    for (int32_t i = 0; i < n_; ++i) {
      if (first_[comp[i]] < 0) first_[comp[i]] = i;
    }

    // Cut edges grouped by segment (both directions, in edge order): the segment adjacency, with
    // the neighbour's node, cluster and segment.
    std::vector<int64_t>& start = start_;
    start.assign(static_cast<size_t>(num_comp) + 1, 0);
    for (const int32_t e : cut_edges) {
      ++start[comp[g_->u[e]] + 1];
      ++start[comp[g_->v[e]] + 1];
    }
    for (int32_t c = 0; c < num_comp; ++c) start[c + 1] += start[c];
    const size_t num_cut = static_cast<size_t>(start[num_comp]);
    std::vector<CutEntry>& cut = cut_;  // one record per entry: one write stream per segment
    cut.resize(num_cut);
    {
      std::vector<int64_t>& fill = fill_;
      fill.assign(start.begin(), start.end() - 1);
      for (const int32_t e : cut_edges) {
        const int32_t u = g_->u[e], v = g_->v[e];
        const int32_t cu = comp[u], cv = comp[v];
        const double w = g_->w[e];
        cut[fill[cu]++] = CutEntry{w, v, cluster[v], cv, e};
        cut[fill[cv]++] = CutEntry{w, u, cluster[u], cu, e};
      }
    }
    seg_begin_.assign(start.begin(), start.end() - 1);
    seg_end_.assign(start.begin() + 1, start.end());
    evaluate_.assign(num_comp, 1);
  }

  // One pass of cluster moves: every segment (in first-node order) that is not next to a segment
  // moved earlier in the pass takes its best move. `incremental`: the segments are those of the
  // previous pass after its moves (no node moved since), and a segment is only evaluated if it
  // moved or a neighbour moved in the previous pass (or it was skipped as such a neighbour): for
  // all others the evaluation sees the same costs and clusters as before, and found no move then.
  // The same moves as a full pass, in the same order.
  int64_t cluster_moves(std::vector<int32_t>* touched, bool incremental) {
    if (!incremental) build_segments();
    const int32_t num_seg = num_seg_;
    int32_t live = 0;
    for (int32_t c = 0; c < num_seg && live < 2; ++c) live += seg_root_[c] == c;
    if (live <= 1) return 0;
    std::vector<CutEntry>& cut = cut_;
    std::vector<uint8_t>& dirty = dirty_;
    dirty.assign(num_seg, 0);
    std::vector<int32_t>& moved_comps = moved_comps_;
    moved_comps.clear();
    target_of_comp_.assign(num_seg, -1);
    int64_t moves = 0;
    for (int32_t c = 0; c < num_seg; ++c) {
      if (seg_root_[c] != c || !evaluate_[c] || dirty[c]) continue;
      const int32_t own = lab_->cluster[first_[c]];
      const int32_t own_label = lab_->label[first_[c]];
      // Summed edge cost from this segment to each neighbouring cluster (current state).
      // As add_candidate for each entry, but a run of entries to one cluster (the cut edges along
      // a stretch of boundary) is summed in a register: the same additions in the same order,
      // without a store and reload per entry.
      cand_ids_.clear();
      cand_w_.clear();
      {
        int32_t run_cluster = -1, run_slot = -1;
        double acc = 0.0;
        for (int64_t q = seg_begin_[c]; q < seg_end_[c]; ++q) {
          const int32_t t = cut[q].cluster;
          if (t == run_cluster) {
            acc += cut[q].w;
            continue;
          }
          if (run_slot >= 0) cand_w_[run_slot] = acc;
          int32_t& slot = mark_[t];
          if (slot < 0) {
            slot = static_cast<int32_t>(cand_ids_.size());
            cand_ids_.push_back(t);
            cand_w_.push_back(cut[q].w);
            acc = cut[q].w;
          } else {
            acc = cand_w_[slot] + cut[q].w;
          }
          run_cluster = t;
          run_slot = slot;
        }
        if (run_slot >= 0) cand_w_[run_slot] = acc;
      }
      const double* sc = &S_[static_cast<size_t>(c) * K_];
      double best_delta;
      int32_t best_new_class = -1;
      const int32_t best_target = best_move([&](int32_t k) { return sc[k]; },
                                            -std::numeric_limits<double>::infinity(), own, own_label,
                                            &best_delta, &best_new_class);
      clear_marks();
      if (best_target == -1) continue;
      const int32_t target = best_target == -2 ? new_cluster_id(best_new_class) : best_target;
      ++moves;
      dirty[c] = 1;
      moved_comps.push_back(c);
      target_of_comp_[c] = target;
      for (int64_t q = seg_begin_[c]; q < seg_end_[c]; ++q) dirty[seg_root_[cut[q].comp]] = 1;
    }
    if (moves > 0) apply_moves(touched);
    return moves;
  }

  // Applies the pass's moves (moved_comps_ -> target_of_comp_) and brings the segments up to date:
  // the moved segments' nodes take the target; entries pointing into them take its cluster; each
  // moved segment merges with its neighbours of that cluster (list of the union: its members'
  // entries that leave it, merged in edge order; summed costs: its nodes' rows in node order, as
  // build_segments forms both). Collects the nodes whose neighbourhood changed into `touched`.
  void apply_moves(std::vector<int32_t>* touched) {
    const int32_t num_seg = num_seg_;
    std::vector<CutEntry>& cut = cut_;
    std::vector<uint8_t>& is_moved = is_moved_;
    is_moved.assign(num_seg, 0);
    for (int32_t c : moved_comps_) is_moved[c] = 1;
    for (int32_t i = 0; i < n_; ++i) {
      const int32_t c = seg_root_[comp_[i]];
      if (!is_moved[c]) continue;
      const int32_t target = target_of_comp_[c];
      lab_->cluster[i] = target;
      lab_->label[i] = cluster_label_[target];
      touched->push_back(i);
    }
    // Neighbours of moved segments: their entries' clusters (and the evaluation next pass).
    std::vector<uint8_t>& seen = dirty_;  // reused: every neighbour of a moved segment is dirty
    std::fill(seen.begin(), seen.end(), 0);
    std::vector<int32_t>& around = around_;
    around.clear();
    for (int32_t c : moved_comps_) {
      for (int64_t q = seg_begin_[c]; q < seg_end_[c]; ++q) {
        touched->push_back(cut[q].other);
        const int32_t d = seg_root_[cut[q].comp];
        if (!seen[d]) {
          seen[d] = 1;
          around.push_back(d);
        }
      }
    }
    for (int32_t d : around) {
      for (int64_t q = seg_begin_[d]; q < seg_end_[d]; ++q) cut[q].cluster = lab_->cluster[cut[q].other];
    }
    // Unions: a moved segment joins its neighbours of its new cluster (never another moved
    // segment: those are not adjacent). The smallest id represents the union.
    joined_.clear();
    for (int32_t c : moved_comps_) {
      const int32_t t = target_of_comp_[c];
      for (int64_t q = seg_begin_[c]; q < seg_end_[c]; ++q) {
        const int32_t d = seg_root_[cut[q].comp];
        if (lab_->cluster[first_[d]] != t) continue;
        const int32_t a = seg_uf_.find(c), b = seg_uf_.find(d);
        if (a == b) continue;
        seg_uf_.merge_into(std::max(a, b), std::min(a, b));
        joined_.push_back(c);
        joined_.push_back(d);
      }
    }
    // Next pass evaluates the moved segments and their neighbours (by their unions' ids).
    std::fill(evaluate_.begin(), evaluate_.end(), 0);
    for (int32_t c : moved_comps_) evaluate_[seg_uf_.find(c)] = 1;
    for (int32_t d : around) evaluate_[seg_uf_.find(d)] = 1;
    if (joined_.empty()) return;
    merged_ = true;
    // Members of every union, grouped by representative (ascending ids within a group).
    std::vector<std::pair<int32_t, int32_t>>& members = members_;
    members.clear();
    std::sort(joined_.begin(), joined_.end());
    joined_.erase(std::unique(joined_.begin(), joined_.end()), joined_.end());
    for (int32_t c : joined_) members.emplace_back(seg_uf_.find(c), c);
    std::sort(members.begin(), members.end());
    for (int32_t c = 0; c < num_seg; ++c) seg_root_[c] = seg_uf_.find(c);
    std::vector<uint8_t>& is_union = is_moved_;  // reused: 1 for the representatives of unions
    std::fill(is_union.begin(), is_union.end(), 0);
    for (size_t a = 0; a < members.size();) {
      size_t b = a;
      while (b < members.size() && members[b].first == members[a].first) ++b;
      const int32_t r = members[a].first;
      is_union[r] = 1;
      // The members' lists are in edge order; merge them (two buffers, one member at a time).
      merge_buf_.clear();
      for (size_t m = a; m < b; ++m) {
        const int32_t c = members[m].second;
        merge_tmp_.clear();
        std::merge(merge_buf_.begin(), merge_buf_.end(), cut.begin() + seg_begin_[c], cut.begin() + seg_end_[c],
                   std::back_inserter(merge_tmp_), [](const CutEntry& x, const CutEntry& y) { return x.e < y.e; });
        merge_buf_.swap(merge_tmp_);
      }
      const int64_t begin = static_cast<int64_t>(cut.size());
      for (const CutEntry& x : merge_buf_) {
        if (seg_root_[x.comp] != r) cut.push_back(x);
      }
      seg_begin_[r] = begin;
      seg_end_[r] = static_cast<int64_t>(cut.size());
      a = b;
    }
    // Summed class costs of the unions: their nodes' rows in node order from zero.
    for (int32_t c = 0; c < num_seg; ++c) {
      if (is_union[c]) std::fill(S_.begin() + static_cast<size_t>(c) * K_, S_.begin() + static_cast<size_t>(c + 1) * K_, 0.0);
    }
    segment_sums_where(in_, comp_.data(), seg_root_.data(), is_union.data(), n_, K_, S_.data());
  }

  // The final state's segments numbered 0.. by first node (as connected_segments numbers them).
  void final_segments(std::vector<int32_t>& out) {
    if (!merged_) {
      out.swap(comp_);
      return;
    }
    std::vector<int32_t>& rank = target_of_comp_;  // reused
    rank.assign(num_seg_, -1);
    int32_t next = 0;
    for (int32_t c = 0; c < num_seg_; ++c) {
      if (seg_root_[c] == c) rank[c] = next++;
    }
    out.resize(n_);
    for (int32_t i = 0; i < n_; ++i) out[i] = rank[seg_root_[comp_[i]]];
  }

  const InstanceView* inst_ = nullptr;
  const T* in_ = nullptr;  // [N, K] input class costs
  const SimpleGraph* g_ = nullptr;
  Labelling* lab_ = nullptr;
  int32_t n_ = 0;
  int32_t K_ = 0;
  double tol_ = 0.0;
  int32_t next_id_ = 0;
  std::vector<int32_t> cluster_label_;  // class of each cluster id
  std::vector<double> node_min_;        // [N] min_k node_costs(i, k)
  std::vector<int32_t> mark_;           // scratch: cluster id -> slot in cand_ids_
  std::vector<int32_t> cand_ids_;
  std::vector<double> cand_w_;
  std::vector<uint8_t> queued_;
  std::vector<int32_t> queue_;  // ring buffer of node_moves
  std::vector<int32_t> seeds_;
  UnionFind uf_;
  std::vector<double> S_;
  std::vector<int32_t> first_;
  std::vector<int64_t> start_, fill_;
  struct CutEntry {
    double w;         // edge cost
    int32_t other;    // the node across the cut edge
    int32_t cluster;  // its cluster
    int32_t comp;     // its segment (as built; seg_root_ gives the union it belongs to now)
    int32_t e;        // the edge (lists are in edge order)
  };
  std::vector<int32_t> cut_edges_;
  std::vector<CutEntry> cut_;
  std::vector<uint8_t> dirty_, is_moved_;
  std::vector<int32_t> moved_comps_;
  std::vector<int32_t> comp_;
  std::vector<int32_t> target_of_comp_;
  // Segments kept between passes (build_segments / apply_moves).
  int32_t num_seg_ = 0;
  bool merged_ = false;                        // some segments were merged since built
  UnionFind seg_uf_;                           // unions of segment ids (smallest id is the root)
  std::vector<int32_t> seg_root_;              // [num_seg_] union of each segment id
  std::vector<int64_t> seg_begin_, seg_end_;   // [num_seg_] cut_ entries of a live segment
  std::vector<uint8_t> evaluate_;              // [num_seg_] evaluate in the next pass
  std::vector<int32_t> around_, joined_;
  std::vector<std::pair<int32_t, int32_t>> members_;
  std::vector<CutEntry> merge_buf_, merge_tmp_;
};

template <class T>
#if defined(__GNUC__) || defined(__clang__)
__attribute__((noinline))
#endif
LocalSearch<T>* thread_solver() {
  thread_local LocalSearch<T> solver;
  return &solver;
}

}  // namespace

int64_t local_search(const InstanceView& inst, const SimpleGraph& g, Labelling& lab, const SolveOptions& opts,
                     LocalSearchStats* stats) {
  // Through a pointer from a non-inlined function (see gaec.cpp, thread_solver).
  if (inst.node_costs == nullptr) return thread_solver<float>()->run(inst, inst.node_costs_f32, g, lab, opts, stats);
  return thread_solver<double>()->run(inst, inst.node_costs, g, lab, opts, stats);
}

}  // namespace detail
}  // namespace cops
