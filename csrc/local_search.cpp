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
#include <deque>
#include <limits>

#include "graph.h"

namespace cops {
namespace detail {

namespace {

class LocalSearch {
 public:
  LocalSearch(const InstanceView& inst, const SimpleGraph& g, Labelling& lab)
      : inst_(inst), g_(g), lab_(lab), n_(g.num_nodes), K_(static_cast<int32_t>(inst.num_classes)) {
    double scale = 1.0;
    for (int64_t i = 0; i < static_cast<int64_t>(n_) * K_; ++i) scale = std::max(scale, std::abs(inst.node_costs[i]));
    for (double w : g.w) scale = std::max(scale, std::abs(w));
    tol_ = 1e-9 * scale;
    // Canonical ids: stuff nodes -> N + class; thing clusters keep their GAEC id.
    for (int32_t i = 0; i < n_; ++i) {
      if (!inst.partitionable[lab_.label[i]]) lab_.cluster[i] = n_ + lab_.label[i];
    }
    next_id_ = n_ + K_;
    cluster_label_.assign(next_id_, -1);
    for (int32_t k = 0; k < K_; ++k) cluster_label_[n_ + k] = k;
    for (int32_t i = 0; i < n_; ++i) cluster_label_[lab_.cluster[i]] = lab_.label[i];
    mark_.assign(next_id_, -1);
  }

  int64_t run(int max_rounds) {
    int64_t total = 0;
    for (int round = 0; round < max_rounds; ++round) {
      const int64_t moved = node_moves() + cluster_moves();
      total += moved;
      if (moved == 0) break;
    }
    return total;
  }

 private:
  double cost(int32_t i, int32_t k) const { return inst_.node_costs[static_cast<size_t>(i) * K_ + k]; }

  int32_t new_cluster_id(int32_t k) {
    if (!inst_.partitionable[k]) return n_ + k;
    const int32_t id = next_id_++;
    cluster_label_.push_back(k);
    mark_.push_back(-1);
    return id;
  }

  // Accumulates, for the neighbours of node i, the summed edge cost per neighbouring cluster.
  void gather_node(int32_t i) {
    cand_ids_.clear();
    cand_w_.clear();
    for (int64_t p = g_.offsets[i]; p < g_.offsets[i + 1]; ++p) {
      const int32_t c = lab_.cluster[g_.nbr[p]];
      const double w = g_.w[g_.eid[p]];
      int32_t& slot = mark_[c];
      if (slot < 0) {
        slot = static_cast<int32_t>(cand_ids_.size());
        cand_ids_.push_back(c);
        cand_w_.push_back(w);
      } else {
        cand_w_[slot] += w;
      }
    }
    for (int32_t c : cand_ids_) mark_[c] = -1;
  }

  int64_t node_moves() {
    std::deque<int32_t> queue;
    std::vector<uint8_t> queued(n_, 0);
    for (int32_t i = 0; i < n_; ++i) {
      for (int64_t p = g_.offsets[i]; p < g_.offsets[i + 1]; ++p) {
        if (lab_.cluster[g_.nbr[p]] != lab_.cluster[i]) {
          queue.push_back(i);
          queued[i] = 1;
          break;
        }
      }
    }
    int64_t moves = 0;
    const int64_t max_moves = 64 * static_cast<int64_t>(n_) + 1024;
    while (!queue.empty() && moves < max_moves) {
      const int32_t i = queue.front();
      queue.pop_front();
      queued[i] = 0;
      const int32_t own = lab_.cluster[i];
      const int32_t own_label = lab_.label[i];
      gather_node(i);
      double w_own = 0.0;
      for (size_t c = 0; c < cand_ids_.size(); ++c)
        if (cand_ids_[c] == own) w_own = cand_w_[c];
      const double base = cost(i, own_label) - w_own;
      double best_delta = -tol_;
      int32_t best_target = -1;  // cluster id; -2 = new cluster of class best_new_class
      int32_t best_new_class = -1;
      for (size_t c = 0; c < cand_ids_.size(); ++c) {
        const int32_t t = cand_ids_[c];
        if (t == own) continue;
        const double delta = cost(i, cluster_label_[t]) - cand_w_[c] - base;
        if (delta < best_delta) {
          best_delta = delta;
          best_target = t;
        }
      }
      // The node's cheapest class as a cluster of its own (thing) or its stuff cluster if that
      // cluster is not among the neighbours (else it was evaluated above).
      int32_t kmin = 0;
      for (int32_t k = 1; k < K_; ++k)
        if (cost(i, k) < cost(i, kmin)) kmin = k;
      const bool stuff_neighbour = !inst_.partitionable[kmin] &&
                                   std::find(cand_ids_.begin(), cand_ids_.end(), n_ + kmin) != cand_ids_.end();
      if (!stuff_neighbour) {
        const double delta = cost(i, kmin) - base;
        if (delta < best_delta) {
          best_delta = delta;
          best_target = -2;
          best_new_class = kmin;
        }
      }
      if (best_target == -1) continue;
      const int32_t target = best_target == -2 ? new_cluster_id(best_new_class) : best_target;
      lab_.cluster[i] = target;
      lab_.label[i] = cluster_label_[target];
      ++moves;
      for (int64_t p = g_.offsets[i]; p < g_.offsets[i + 1]; ++p) {
        const int32_t j = g_.nbr[p];
        if (!queued[j]) {
          queued[j] = 1;
          queue.push_back(j);
        }
      }
    }
    return moves;
  }

  int64_t cluster_moves() {
    // Segments: connected components of joined edges.
    std::vector<int32_t> comp(n_, -1);
    std::vector<int32_t> order;  // nodes grouped by segment
    std::vector<int64_t> comp_start;
    order.reserve(n_);
    int32_t num_comp = 0;
    for (int32_t s = 0; s < n_; ++s) {
      if (comp[s] >= 0) continue;
      comp_start.push_back(static_cast<int64_t>(order.size()));
      comp[s] = num_comp;
      order.push_back(s);
      for (size_t q = order.size() - 1; q < order.size(); ++q) {
        const int32_t i = order[q];
        for (int64_t p = g_.offsets[i]; p < g_.offsets[i + 1]; ++p) {
          const int32_t j = g_.nbr[p];
          if (comp[j] < 0 && lab_.cluster[j] == lab_.cluster[i]) {
            comp[j] = num_comp;
            order.push_back(j);
          }
        }
      }
      ++num_comp;
    }
    comp_start.push_back(static_cast<int64_t>(order.size()));
    if (num_comp <= 1) return 0;

    // Summed class costs per segment.
    std::vector<double> S(static_cast<size_t>(num_comp) * K_, 0.0);
    for (int32_t c = 0; c < num_comp; ++c) {
      double* sc = &S[static_cast<size_t>(c) * K_];
      for (int64_t q = comp_start[c]; q < comp_start[c + 1]; ++q) {
        const double* nc = &inst_.node_costs[static_cast<size_t>(order[q]) * K_];
        for (int32_t k = 0; k < K_; ++k) sc[k] += nc[k];
      }
    }

    std::vector<uint8_t> dirty(num_comp, 0);
    int64_t moves = 0;
    std::vector<int32_t> nb_comps;
    for (int32_t c = 0; c < num_comp; ++c) {
      if (dirty[c]) continue;
      const int32_t first = order[comp_start[c]];
      const int32_t own = lab_.cluster[first];
      const int32_t own_label = lab_.label[first];
      // Summed edge cost from this segment to each neighbouring cluster.
      cand_ids_.clear();
      cand_w_.clear();
      nb_comps.clear();
      for (int64_t q = comp_start[c]; q < comp_start[c + 1]; ++q) {
        const int32_t i = order[q];
        for (int64_t p = g_.offsets[i]; p < g_.offsets[i + 1]; ++p) {
          const int32_t j = g_.nbr[p];
          if (comp[j] == c) continue;
          nb_comps.push_back(comp[j]);
          const int32_t t = lab_.cluster[j];
          int32_t& slot = mark_[t];
          if (slot < 0) {
            slot = static_cast<int32_t>(cand_ids_.size());
            cand_ids_.push_back(t);
            cand_w_.push_back(g_.w[g_.eid[p]]);
          } else {
            cand_w_[slot] += g_.w[g_.eid[p]];
          }
        }
      }
      for (int32_t t : cand_ids_) mark_[t] = -1;
      const double* sc = &S[static_cast<size_t>(c) * K_];
      const double base = sc[own_label];
      double best_delta = -tol_;
      int32_t best_target = -1;
      int32_t best_new_class = -1;
      for (size_t t = 0; t < cand_ids_.size(); ++t) {
        if (cand_ids_[t] == own) continue;  // cannot happen for a full component; kept for safety
        const double delta = sc[cluster_label_[cand_ids_[t]]] - cand_w_[t] - base;
        if (delta < best_delta) {
          best_delta = delta;
          best_target = cand_ids_[t];
        }
      }
      int32_t kmin = 0;
      for (int32_t k = 1; k < K_; ++k)
        if (sc[k] < sc[kmin]) kmin = k;
      if (kmin != own_label) {
        const bool stuff_neighbour = !inst_.partitionable[kmin] &&
                                     std::find(cand_ids_.begin(), cand_ids_.end(), n_ + kmin) != cand_ids_.end();
        if (!stuff_neighbour) {
          const double delta = sc[kmin] - base;
          if (delta < best_delta) {
            best_delta = delta;
            best_target = -2;
            best_new_class = kmin;
          }
        }
      }
      if (best_target == -1) continue;
      const int32_t target = best_target == -2 ? new_cluster_id(best_new_class) : best_target;
      const int32_t new_label = cluster_label_[target];
      for (int64_t q = comp_start[c]; q < comp_start[c + 1]; ++q) {
        lab_.cluster[order[q]] = target;
        lab_.label[order[q]] = new_label;
      }
      ++moves;
      dirty[c] = 1;
      for (int32_t d : nb_comps) dirty[d] = 1;
    }
    return moves;
  }

  const InstanceView& inst_;
  const SimpleGraph& g_;
  Labelling& lab_;
  const int32_t n_;
  const int32_t K_;
  double tol_ = 0.0;
  int32_t next_id_ = 0;
  std::vector<int32_t> cluster_label_;  // class of each cluster id
  std::vector<int32_t> mark_;           // scratch: cluster id -> slot in cand_ids_
  std::vector<int32_t> cand_ids_;
  std::vector<double> cand_w_;
};

}  // namespace

int64_t local_search(const InstanceView& inst, const SimpleGraph& g, Labelling& lab, int max_rounds) {
  LocalSearch ls(inst, g, lab);
  return ls.run(max_rounds);
}

}  // namespace detail
}  // namespace cops
