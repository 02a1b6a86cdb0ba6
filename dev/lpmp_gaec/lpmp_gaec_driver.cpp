// Side-by-side driver: LPMP's asymmetric_multiway_cut_gaec (LPMP commit 6ec78c5, the solver the
// original COPS code calls through lpmp_mc.raw_solvers.amwc_solver), unmodified, on one instance.
// Build with build.sh (beside this file); used by tools/benchmark.py solver --lpmp.
//
//   lpmp_gaec_driver FILE [REPEATS]
//
// FILE (little endian): int64 N, K, E; float64 node costs [N, K] row-major; int64 edges [E, 2];
// float64 edge costs [E]; uint8 partitionable [K].
// Prints one line per repeat: "construct_s gaec_s objective" (seconds to build LPMP's instance as
// its Python binding does, seconds in asymmetric_multiway_cut_gaec, LPMP's evaluate()).
#include <chrono>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <vector>
#include "asymmetric_multiway_cut/asymmetric_multiway_cut_gaec.h"
int main(int argc, char** argv) {
  if (argc < 2) { std::fprintf(stderr, "usage: driver FILE [repeats]\n"); return 2; }
  int repeats = argc > 2 ? std::atoi(argv[2]) : 1;
  FILE* f = std::fopen(argv[1], "rb");
  if (!f) return 3;
  int64_t hdr[3];
  if (std::fread(hdr, 8, 3, f) != 3) return 4;
  const int64_t N = hdr[0], K = hdr[1], E = hdr[2];
  std::vector<double> nc(N * K), ec(E);
  std::vector<int64_t> ed(2 * E);
  std::vector<uint8_t> part(K);
  if (std::fread(nc.data(), 8, N * K, f) != size_t(N * K)) return 5;
  if (std::fread(ed.data(), 8, 2 * E, f) != size_t(2 * E)) return 5;
  if (std::fread(ec.data(), 8, E, f) != size_t(E)) return 5;
  if (std::fread(part.data(), 1, K, f) != size_t(K)) return 5;
  std::fclose(f);
  for (int r = 0; r < repeats; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    LPMP::asymmetric_multiway_cut_instance inst;
    // as in LPMP's construct_instance (python binding)
    for (int64_t e = 0; e < E; ++e) inst.edge_costs.add_edge(ed[2 * e], ed[2 * e + 1], ec[e]);
    std::vector<double> costs;
    for (int64_t i = 0; i < N; ++i) {
      costs.clear();
      for (int64_t l = 0; l < K; ++l) costs.push_back(nc[i * K + l]);
      inst.node_costs.push_back(costs.begin(), costs.end());
    }
    std::vector<bool> p(part.begin(), part.end());
    inst.node_costs.partitionable(p.begin(), p.end());
    auto t1 = std::chrono::steady_clock::now();
    auto lab = LPMP::asymmetric_multiway_cut_gaec(inst);
    auto t2 = std::chrono::steady_clock::now();
    const double obj = inst.evaluate(lab);
    std::printf("%.6f %.6f %.10g\n", std::chrono::duration<double>(t1 - t0).count(),
                std::chrono::duration<double>(t2 - t1).count(), obj);
  }
  return 0;
}
