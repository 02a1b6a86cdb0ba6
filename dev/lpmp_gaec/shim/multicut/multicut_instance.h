// Minimal stand-in for LPMP's multicut_instance (cut_base_instance) with the same edge storage
// (vector of weighted edges, endpoints ordered min/max, no merging), so that LPMP's unmodified
// asymmetric_multiway_cut_gaec.cpp compiles without LPMP's external dependencies.
#pragma once
#include <array>
#include <vector>
#include <cassert>
#include <algorithm>
#include <cstddef>
namespace LPMP {
struct weighted_edge : public std::array<std::size_t, 2> {
  weighted_edge(std::size_t i, std::size_t j, double c) : std::array<std::size_t, 2>({i, j}), cost(c) {}
  double cost;
};
using multicut_edge_labeling = std::vector<char>;
struct multicut_instance {
  std::vector<weighted_edge> edges_;
  std::size_t no_nodes_ = 0;
  void add_edge(std::size_t i, std::size_t j, double cost) {
    no_nodes_ = std::max({no_nodes_, i + 1, j + 1});
    edges_.push_back(weighted_edge(std::min(i, j), std::max(i, j), cost));
  }
  const std::vector<weighted_edge>& edges() const { return edges_; }
  std::size_t no_edges() const { return edges_.size(); }
  double evaluate(const multicut_edge_labeling& l) const {
    double c = 0.0;
    for (std::size_t e = 0; e < edges_.size(); ++e) c += edges_[e].cost * l[e];
    return c;
  }
  bool feasible(const multicut_edge_labeling&) const { return true; }
};
}  // namespace LPMP
