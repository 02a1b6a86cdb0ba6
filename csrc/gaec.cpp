// Greedy additive edge contraction (GAEC) for the asymmetric multiway cut.
//
// GAEC for multicut: Keuper et al. 2015, "Efficient decomposition of image and mesh graphs by
// lifted multicuts". Its extension to AMWC as used by COPS (Abbas & Swoboda 2021, Sec. 3.2, and
// the LPMP implementation the original code called): every node starts as its own cluster at its
// cheapest class; the gain of contracting the clusters a and b joined by the (summed) edge cost W
// is
//
//     gain(a, b) = min_k (C_a[k] + C_b[k]) - min_k C_a[k] - min_k C_b[k] - W      ("join - separate")
//
// where C_a is the summed class-cost vector of cluster a. The edge with the most negative gain is
// contracted (the joined cluster takes the class minimising the summed costs), parallel edges are
// summed, and contraction stops when no gain is negative. Finally adjacent clusters with the same
// non-partitionable class are merged (feasibility of the AMWC).
//
// Data structures: a 16-ary heap of (gain, edge) entries with float keys; an entry is stale when
// the edge died or its key is not the one stamped on the edge when it was last queued (the key
// serves as the stale-entry stamp). When a cluster m is merged into s (m has the smaller
// adjacency), only m's edges move and are re-evaluated. The gains of s's other edges are
// re-evaluated lazily: a popped entry is recomputed in double precision with the current class
// costs and re-queued if it got worse, so every contraction uses its exact current gain; an edge
// whose gain got worse keeps its queued entry until then. When the class of s changes, all its
// edges are re-evaluated.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#include "adjacency.h"
#include "graph.h"
#include "simd.h"

namespace cops {
namespace detail {

namespace {

// Order-preserving code of a float: a < b  <=>  code(a) < code(b) (for non-NaN values).
inline uint32_t float_code(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// 16-ary min-heap of packed (code << 32 | edge) entries. Only negative gains are queued, so every
// code is < 2^31 and every entry is < 2^63: entries compare equally as signed integers, which
// lets AVX2 find the smallest of a node's 16 children with signed 64-bit compares and a
// reduction instead of a chain of dependent scalar compares. The storage is aligned so that the
// 16 children of a node (indices 16i+1 .. 16i+16) fill one 128-byte aligned pair of cache lines
// (fewer levels than an 8-ary heap, each a pair of lines: a pop at 10^6 entries waits for 5
// levels of cache misses instead of 7), and the slots past the last entry hold kPad (larger than
// every entry), so a node's last child group needs no bounds check. Any heap pops the same
// sequence of entries (the smallest one each time), so the arity does not change the result.
class EdgeHeap {
 public:
  static constexpr size_t kArity = 16;
  static constexpr uint64_t kPad = 0x7fffffffffffffffull;

  EdgeHeap() { grow(1024); }
  bool empty() const { return n_ == 0; }
  size_t size() const { return n_; }
  void reserve(size_t n) {
    if (n + kArity + 1 > cap_) grow(n + kArity + 1);
  }
  void clear() {
    std::fill(d_, d_ + n_, kPad);
    n_ = 0;
  }
  void push_unordered(uint64_t x) {
    reserve(n_ + 1);
    d_[n_++] = x;
  }
  void build() {
    if (n_ < 2) return;
    for (size_t i = (n_ - 2) / kArity + 1; i-- > 0;) sift_down(i);
  }
  void push(uint64_t x) {
    reserve(n_ + 1);
    size_t i = n_++;
    while (i > 0) {
      const size_t parent = (i - 1) / kArity;
      if (d_[parent] <= x) break;
      d_[i] = d_[parent];
      i = parent;
    }
    d_[i] = x;
  }
  uint64_t pop() {
    const uint64_t top = d_[0];
    --n_;
    d_[0] = d_[n_];
    d_[n_] = kPad;
    if (n_ > 0) sift_down(0);
    return top;
  }
  // Removes the entries for which `stale(entry)` holds and restores the heap order: O(size).
  template <class Pred>
  void compact(Pred&& stale) {
    size_t out = 0;
    for (size_t i = 0; i < n_; ++i)
      if (!stale(d_[i])) d_[out++] = d_[i];
    std::fill(d_ + out, d_ + n_, kPad);
    n_ = out;
    build();
  }

 private:
  void grow(size_t cap) {
    cap = std::max(cap, 2 * cap_);
    // d_[1] on a 128-byte boundary.
    std::vector<uint64_t> fresh(cap + 32, kPad);
    const uintptr_t base = reinterpret_cast<uintptr_t>(fresh.data());
    const size_t skip = ((128 - (base + 8) % 128) % 128) / 8;  // slots until &d[1] is 128-aligned
    uint64_t* d = fresh.data() + skip;
    if (n_) std::copy(d_, d_ + n_, d);
    buf_.swap(fresh);
    d_ = d;
    cap_ = cap;
  }

  void sift_down(size_t i) {
#if COPS_X86_DISPATCH
    if (have_avx2_) {
      sift_down_avx2(d_, n_, i);
      return;
    }
#endif
    const size_t n = n_;
    const uint64_t x = d_[i];
    for (;;) {
      const size_t first = i * kArity + 1;
      if (first >= n) break;
      const uint64_t* c = d_ + first;
      size_t best = 0;
      for (size_t j = 1; j < kArity; ++j) best = c[j] < c[best] ? j : best;
      const uint64_t best_v = c[best];
      if (best_v >= x) break;
      d_[i] = best_v;
      i = first + best;
    }
    d_[i] = x;
  }

#if COPS_X86_DISPATCH
  __attribute__((target("avx2"))) static void sift_down_avx2(uint64_t* d, size_t n, size_t i) {
    const uint64_t x = d[i];
    for (;;) {
      const size_t first = i * kArity + 1;
      if (first >= n) break;
      const __m256i a = _mm256_load_si256(reinterpret_cast<const __m256i*>(d + first));
      const __m256i b = _mm256_load_si256(reinterpret_cast<const __m256i*>(d + first + 4));
      const __m256i a2 = _mm256_load_si256(reinterpret_cast<const __m256i*>(d + first + 8));
      const __m256i b2 = _mm256_load_si256(reinterpret_cast<const __m256i*>(d + first + 12));
      const __m256i mab = _mm256_blendv_epi8(a, b, _mm256_cmpgt_epi64(a, b));
      const __m256i mab2 = _mm256_blendv_epi8(a2, b2, _mm256_cmpgt_epi64(a2, b2));
      __m256i m = _mm256_blendv_epi8(mab, mab2, _mm256_cmpgt_epi64(mab, mab2));
      __m256i t = _mm256_permute4x64_epi64(m, 0x4e);  // swap the 128-bit halves
      m = _mm256_blendv_epi8(m, t, _mm256_cmpgt_epi64(m, t));
      t = _mm256_shuffle_epi32(m, 0x4e);  // swap the 64-bit halves of each 128-bit lane
      m = _mm256_blendv_epi8(m, t, _mm256_cmpgt_epi64(m, t));
      const uint64_t best_v = static_cast<uint64_t>(_mm_cvtsi128_si64(_mm256_castsi256_si128(m)));
      if (best_v >= x) break;
      const unsigned eq = static_cast<unsigned>(_mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpeq_epi64(a, m)))) |
                          (static_cast<unsigned>(_mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpeq_epi64(b, m)))) << 4) |
                          (static_cast<unsigned>(_mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpeq_epi64(a2, m)))) << 8) |
                          (static_cast<unsigned>(_mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpeq_epi64(b2, m)))) << 12);
      d[i] = best_v;
      i = first + static_cast<size_t>(__builtin_ctz(eq));
    }
    d[i] = x;
  }
  const bool have_avx2_ = cpu_has_avx2();
#endif

  std::vector<uint64_t> buf_;
  uint64_t* d_ = nullptr;
  size_t n_ = 0;
  size_t cap_ = 0;  // usable slots from d_ (kArity + 1 of them past the last entry stay kPad)
};

// min_k (x[k] + y[k]) over k < K, vectorised. Exact: min does not depend on the order.
inline double min_sum_sse2(const double* x, const double* y, int32_t K) {
  constexpr double inf = std::numeric_limits<double>::infinity();
  int32_t k = 0;
  double m = inf;
#if defined(__SSE2__)
  __m128d m0 = _mm_set1_pd(inf), m1 = _mm_set1_pd(inf);
  for (; k + 4 <= K; k += 4) {
    m0 = _mm_min_pd(m0, _mm_add_pd(_mm_loadu_pd(x + k), _mm_loadu_pd(y + k)));
    m1 = _mm_min_pd(m1, _mm_add_pd(_mm_loadu_pd(x + k + 2), _mm_loadu_pd(y + k + 2)));
  }
  m0 = _mm_min_pd(m0, m1);
  double buf[2];
  _mm_storeu_pd(buf, m0);
  m = buf[0] < buf[1] ? buf[0] : buf[1];
#endif
  for (; k < K; ++k) {
    const double v = x[k] + y[k];
    m = v < m ? v : m;
  }
  return m;
}

// The same for a float32 input row x (widened exactly; the sums are formed in double).
inline double min_sum_sse2(const float* x, const double* y, int32_t K) {
  double m = std::numeric_limits<double>::infinity();
  for (int32_t k = 0; k < K; ++k) {
    const double v = static_cast<double>(x[k]) + y[k];
    m = v < m ? v : m;
  }
  return m;
}
inline double min_sum_sse2(const float* x, const float* y, int32_t K) {
  double m = std::numeric_limits<double>::infinity();
  for (int32_t k = 0; k < K; ++k) {
    const double v = static_cast<double>(x[k]) + static_cast<double>(y[k]);
    m = v < m ? v : m;
  }
  return m;
}

#if COPS_X86_DISPATCH
// min_sum with AVX2 (4 doubles per instruction), used when the CPU supports it; X / Y are double
// (pool rows, float64 input) or float (float32 input rows).
template <class X, class Y>
__attribute__((target("avx2"))) inline double min_sum_avx2(const X* x, const Y* y, int32_t K) {
  constexpr double inf = std::numeric_limits<double>::infinity();
  __m256d m0 = _mm256_set1_pd(inf), m1 = _mm256_set1_pd(inf);
  int32_t k = 0;
  for (; k + 8 <= K; k += 8) {
    m0 = _mm256_min_pd(m0, _mm256_add_pd(load4(x + k), load4(y + k)));
    m1 = _mm256_min_pd(m1, _mm256_add_pd(load4(x + k + 4), load4(y + k + 4)));
  }
  m0 = _mm256_min_pd(m0, m1);
  double buf[4];
  _mm256_storeu_pd(buf, m0);
  double m = buf[0];
  for (int i = 1; i < 4; ++i) m = buf[i] < m ? buf[i] : m;
  for (; k < K; ++k) {
    const double v = static_cast<double>(x[k]) + static_cast<double>(y[k]);
    m = v < m ? v : m;
  }
  return m;
}
#endif

// dst[k] += src[k] (add) or dst[k] = src[k] over k < K, src double or float32 (widened exactly);
// the same values with any instruction set.
template <bool add, class S>
inline void row_update_scalar(double* dst, const S* src, int32_t K) {
  for (int32_t k = 0; k < K; ++k) dst[k] = add ? dst[k] + static_cast<double>(src[k]) : static_cast<double>(src[k]);
}
#if COPS_X86_DISPATCH
template <bool add, class S>
__attribute__((target("avx2"))) inline void row_update_avx2(double* dst, const S* src, int32_t K) {
  int32_t k = 0;
  for (; k + 4 <= K; k += 4) {
    const __m256d v = load4(src + k);
    _mm256_storeu_pd(dst + k, add ? _mm256_add_pd(_mm256_loadu_pd(dst + k), v) : v);
  }
  for (; k < K; ++k) dst[k] = add ? dst[k] + static_cast<double>(src[k]) : static_cast<double>(src[k]);
}
#endif

struct EdgeRec {
  double w;      // summed edge cost
  int32_t a, b;  // current endpoints (cluster roots)
};

// Reusable solver state: one instance per thread keeps its buffers between solves, so repeated
// solves (training, benchmarks) do not pay for fresh memory again. T: the type of the input class
// costs (float32 input is read as it is, widened exactly where it is used: half the memory
// traffic of a widened copy); the summed costs of clusters with more than one node are double.
template <class T>
class Gaec {
 public:
  Labelling run(const InstanceView& inst, const T* node_costs, const SimpleGraph& g, int64_t* num_contractions) {
    inst_ = &inst;
    in_ = node_costs;
    g_ = &g;
    n_ = g.num_nodes;
    K_ = static_cast<int32_t>(inst.num_classes);
    init();
    int64_t contractions = 0;
    while (!heap_.empty()) {
      const uint64_t top = heap_.pop();
      const int32_t e = static_cast<int32_t>(top & 0xffffffffu);
      const uint32_t code = static_cast<uint32_t>(top >> 32);
      if (queued_[e] != code) continue;  // stale entry (a dead edge has queued_ 0)
      queued_[e] = 0;
      const EdgeRec& r = E_[e];
      --live_;
      const double gain = compute_gain(r.a, r.b, r.w);
      if (!(gain < 0.0)) continue;  // no longer improving; queued again if its cost improves
      if (float_code(static_cast<float>(gain)) > code) {
        queue(e, gain);  // worse than when it was queued: re-queue with the exact gain
        continue;
      }
      contract(e, joint_label(r.a, r.b));
      ++contractions;
    }
    if (num_contractions) *num_contractions = contractions;
    return finish();
  }

 private:
  // Summed class costs of cluster c: the input row while c is a single node (row_of_[c] < 0),
  // else a pool row.
  const T* input_row(int32_t c) const { return in_ + static_cast<size_t>(c) * K_; }
  const double* pool_row(int32_t r) const { return &pool_[static_cast<size_t>(r) * K_]; }
  // Address of the first summed class cost of c (for prefetching).
  const void* costs_address(int32_t c) const {
    const int32_t r = row_of_[c];
    return r < 0 ? static_cast<const void*>(input_row(c)) : static_cast<const void*>(pool_row(r));
  }
  size_t row_bytes(int32_t c) const { return static_cast<size_t>(K_) * (row_of_[c] < 0 ? sizeof(T) : sizeof(double)); }

  // A writable pool row for cluster c (created from its input row on first use). May move the
  // pool: pointers to pool rows are invalid afterwards.
  double* writable_costs(int32_t c) {
    if (row_of_[c] < 0) {
      int32_t r;
      if (!free_rows_.empty()) {
        r = free_rows_.back();
        free_rows_.pop_back();
      } else {
        r = static_cast<int32_t>(pool_.size() / K_);
        pool_.resize(pool_.size() + K_);
      }
      row_of_[c] = r;
      const T* src = input_row(c);
      double* dst = &pool_[static_cast<size_t>(r) * K_];
      row_update<false>(dst, src);
    }
    return &pool_[static_cast<size_t>(row_of_[c]) * K_];
  }

  template <bool add, class S>
  void row_update(double* dst, const S* src) const {
#if COPS_X86_DISPATCH
    if (have_avx2_) return row_update_avx2<add>(dst, src, K_);
#endif
    row_update_scalar<add>(dst, src, K_);
  }

  // Gain ("join - separate") of contracting clusters a and b joined by summed edge cost W.
  // The class part is >= 0, so with W <= 0 the gain is >= 0 and the O(K) part is skipped (a
  // non-negative gain is never queued; the value returned is then only a lower bound).
  double compute_gain(int32_t a, int32_t b, double W) const {
    if (label_[a] == label_[b] || W <= 0.0) return -W;
    return (min_sum(a, b) - minc_[a] - minc_[b]) - W;
  }

  // min_k (C_a[k] + C_b[k]); exact (min does not depend on the evaluation order, and float32
  // inputs are widened exactly).
  double min_sum(int32_t a, int32_t b) const {
    return with_rows(a, b, [this](const auto* x, const auto* y) { return min_sum_rows(x, y); });
  }
  // f(x, y) on the summed class-cost rows of clusters a and b, each an input row (T) or a pool
  // row (double); with one of each the input row comes first (f is symmetric in its callers).
  template <class F>
  auto with_rows(int32_t a, int32_t b, F&& f) const {
    const int32_t ra = row_of_[a], rb = row_of_[b];
    if (ra >= 0 && rb >= 0) return f(pool_row(ra), pool_row(rb));
    if (ra >= 0) return f(input_row(b), pool_row(ra));
    if (rb >= 0) return f(input_row(a), pool_row(rb));
    return f(input_row(a), input_row(b));
  }
  template <class X, class Y>
  double min_sum_rows(const X* x, const Y* y) const {
#if COPS_X86_DISPATCH
    if (have_avx2_) return min_sum_avx2(x, y, K_);
#endif
    return min_sum_sse2(x, y, K_);
  }

  // Class of the cluster joining a and b: argmin_k (C_a[k] + C_b[k]), lowest k on ties.
  int32_t joint_label(int32_t a, int32_t b) const {
    if (label_[a] == label_[b]) return label_[a];
    return with_rows(a, b, [this](const auto* x, const auto* y) { return argmin_sum(x, y); });
  }
  template <class X, class Y>
  int32_t argmin_sum(const X* ca, const Y* cb) const {
    double best = std::numeric_limits<double>::infinity();
    int32_t best_k = 0;
    for (int32_t k = 0; k < K_; ++k) {
      const double v = static_cast<double>(ca[k]) + static_cast<double>(cb[k]);
      if (v < best) {
        best = v;
        best_k = k;
      }
    }
    return best_k;
  }

  void queue(int32_t e, double gain) {
    const uint32_t code = float_code(static_cast<float>(gain));
    if (queued_[e] == 0) ++live_;
    queued_[e] = code;
    heap_.push((static_cast<uint64_t>(code) << 32) | static_cast<uint32_t>(e));
    if (heap_.size() > 2 * live_ + 4096) {
      heap_.compact([&](uint64_t x) {
        const int32_t e2 = static_cast<int32_t>(x & 0xffffffffu);
        return queued_[e2] != static_cast<uint32_t>(x >> 32);
      });
    }
  }

  void kill(int32_t e) {
    if (queued_[e]) {
      queued_[e] = 0;
      --live_;
    }
  }

  // Re-evaluates edge e after its cost or an endpoint changed. A queued entry with a better key
  // than the new gain stays in place and is refreshed when popped.
  void reevaluate(int32_t e) {
    const EdgeRec& r = E_[e];
    const double gain = compute_gain(r.a, r.b, r.w);
    if (!(gain < 0.0)) return;  // a queued entry (if any) is dropped when popped
    if (queued_[e] && queued_[e] <= float_code(static_cast<float>(gain))) return;
    queue(e, gain);
  }

  void init() {
    uf_.reset(n_);
    live_ = 0;
    heap_.clear();
    row_of_.assign(n_, -1);
    pool_.clear();
    free_rows_.clear();
    label_.resize(n_);
    minc_.resize(n_);
    node_min_.resize(n_);
    double scale = 1.0;  // handed to the local search with node_min_ (its tolerance scale)
    for (int32_t i = 0; i < n_; ++i) {
      double absmax;
      label_[i] = row_argmin_absmax(input_row(i), K_, &minc_[i], &absmax);
      node_min_[i] = minc_[i];
      scale = absmax > scale ? absmax : scale;
    }
    const int32_t E = g_->num_edges();
    E_.resize(E);
    for (int32_t e = 0; e < E; ++e) {
      const double w = g_->w[e];
      E_[e] = EdgeRec{w, g_->u[e], g_->v[e]};
      scale = std::fabs(w) > scale ? std::fabs(w) : scale;
    }
    scale_ = scale;
    alive_.assign(n_, 1);
    queued_.assign(E, 0);
    adj_.init(n_, g_->offsets.data(), g_->nbr.data(), g_->eid.data(), alive_.data());
    heap_.reserve(E + E / 2 + 4096);
    for (int32_t e = 0; e < E; ++e) {
      const double gain = compute_gain(E_[e].a, E_[e].b, E_[e].w);
      if (gain < 0.0) {
        const uint32_t code = float_code(static_cast<float>(gain));
        queued_[e] = code;
        heap_.push_unordered((static_cast<uint64_t>(code) << 32) | static_cast<uint32_t>(e));
        ++live_;
      }
    }
    heap_.build();
  }

  void contract(int32_t e, int32_t joint) {
    int32_t s = E_[e].a, m = E_[e].b;
    if (adj_.size(s) < adj_.size(m)) std::swap(s, m);
    kill(e);
    adj_.erase(s, m);
    uf_.merge_into(m, s);
    alive_[m] = 0;

    const int32_t old_label_s = label_[s];
    const int32_t old_label_m = label_[m];
    label_[s] = joint;
    const bool label_changed = joint != old_label_s;
    {  // m's class costs are added to s's after the first two passes below: fetch them now
      const char* p = static_cast<const char*>(costs_address(m));
      const size_t bytes = row_bytes(m);
      for (size_t off = 0; off < bytes; off += 64) COPS_PREFETCH(p + off);
    }

    // The moves touch scattered memory (s's table, the neighbours' tables, edge records); they
    // are done in three passes so that each pass prefetches what the next one reads.
    moves_.clear();
    adj_.for_each(m, [&](int32_t x, int32_t em) {
      if (x == s) return;
      moves_.push_back({x, em, -1});
      adj_.prefetch(s, x);
      adj_.prefetch_head(x);
      COPS_PREFETCH(&E_[em]);
      COPS_PREFETCH(&queued_[em]);
      COPS_PREFETCH(&label_[x]);
    });
    for (Move& mv : moves_) {
      mv.es = adj_.find(s, mv.x);
      if (mv.es >= 0) {
        COPS_PREFETCH(&E_[mv.es]);
        COPS_PREFETCH(&queued_[mv.es]);
      } else {
        adj_.prefetch_data(mv.x);  // rekeyed below
      }
    }
    {
      double* cs = writable_costs(s);
      if (row_of_[m] < 0) {
        row_update<true>(cs, input_row(m));
      } else {
        row_update<true>(cs, pool_row(row_of_[m]));
      }
      if (row_of_[m] >= 0) {  // m is gone: its row can serve another cluster
        free_rows_.push_back(row_of_[m]);
        row_of_[m] = -1;
      }
      minc_[s] = cs[joint];
    }
    for (const Move& mv : moves_) {
      const int32_t x = mv.x, em = mv.em, es = mv.es;
      if (es >= 0) {
        // Parallel edge: sum into s's edge, drop m's (its entry in x's map is left to lazy deletion).
        E_[es].w += E_[em].w;
        kill(em);
        if (!label_changed) reevaluate(es);
      } else {
        adj_.insert(s, x, em);
        adj_.rekey(x, m, s);
        EdgeRec& r = E_[em];
        if (r.a == m) r.a = s;
        else r.b = s;
        const bool unchanged = label_[x] == joint && label_[x] == old_label_m;
        if (!label_changed && !unchanged) reevaluate(em);
      }
    }
    adj_.release(m);
    if (label_changed) {
      adj_.for_each(s, [&](int32_t, int32_t es) { reevaluate(es); });
    }
  }

  Labelling finish() {
    // Final merge: adjacent clusters with the same non-partitionable class form one segment.
    // The roots after the contractions are looked up once per node; an edge then needs the
    // union-find only when it joins two such clusters (merged clusters keep their class, so the
    // class test on the earlier roots is the same test).
    std::vector<int32_t>& root = root_;
    root.resize(n_);
    for (int32_t i = 0; i < n_; ++i) root[i] = uf_.find(i);
    const uint8_t* partitionable = inst_->partitionable;
    for (int32_t e = 0; e < g_->num_edges(); ++e) {
      const int32_t ra = root[g_->u[e]], rb = root[g_->v[e]];
      if (ra == rb || label_[ra] != label_[rb] || partitionable[label_[ra]]) continue;
      const int32_t a = uf_.find(ra), b = uf_.find(rb);
      if (a != b) uf_.merge_into(b, a);
    }
    Labelling lab;
    lab.label.resize(n_);
    lab.cluster.resize(n_);
    for (int32_t i = 0; i < n_; ++i) {
      const int32_t r = uf_.find(root[i]);
      lab.cluster[i] = r;
      lab.label[i] = label_[r];
    }
    lab.node_min.swap(node_min_);
    lab.cost_scale = scale_;
    return lab;
  }

  const InstanceView* inst_ = nullptr;
  const T* in_ = nullptr;  // [N, K] input class costs
  const SimpleGraph* g_ = nullptr;
  int32_t n_ = 0;
  int32_t K_ = 0;
#if COPS_X86_DISPATCH
  const bool have_avx2_ = __builtin_cpu_supports("avx2");
#endif
  UnionFind uf_;
  std::vector<int32_t> row_of_;    // [N] pool row of a cluster root's summed class costs, -1: input row
  std::vector<double> pool_;       // [rows, K] summed class costs of clusters with > 1 node
  std::vector<int32_t> free_rows_;  // pool rows of merged-away clusters
  std::vector<int32_t> label_;  // class per cluster root
  std::vector<double> minc_;    // summed class cost of cluster root at label_[root]
  std::vector<double> node_min_;  // [N] min_k c_V(i, k), for the local search
  std::vector<int32_t> root_;     // [N] scratch of finish()
  double scale_ = 1.0;            // max(1, max |c_V|, max |w|), for the local search
  std::vector<EdgeRec> E_;
  std::vector<uint8_t> alive_;    // per cluster id: 0 once merged away; shared with adj_
  std::vector<uint32_t> queued_;  // per edge: float_code of its current heap entry's key, 0 if none
  AdjacencyTables adj_;
  EdgeHeap heap_;
  size_t live_ = 0;  // edges with a current heap entry
  struct Move {
    int32_t x, em, es;  // neighbour of m, edge (m, x), edge (s, x) or -1
  };
  std::vector<Move> moves_;
};

template <class T>
#if defined(__GNUC__) || defined(__clang__)
__attribute__((noinline))
#endif
Gaec<T>* thread_solver() {
  thread_local Gaec<T> solver;
  return &solver;
}

}  // namespace

Labelling gaec(const InstanceView& inst, const SimpleGraph& g, int64_t* num_contractions) {
  // The solver is reached through a pointer from a non-inlined function: code inlined into a
  // function that names a thread_local object of a shared library re-derives its address with
  // __tls_get_addr after every call (measured: ~12 % of all instructions).
  if (inst.node_costs == nullptr) return thread_solver<float>()->run(inst, inst.node_costs_f32, g, num_contractions);
  return thread_solver<double>()->run(inst, inst.node_costs, g, num_contractions);
}

}  // namespace detail
}  // namespace cops
