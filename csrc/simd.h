// Small vectorised row kernels shared by GAEC and the local search, with AVX2 chosen at run time
// on x86 (the package is built without -march, so that wheels run on any x86-64) and a portable
// fallback. All results are exact: min / max do not depend on the evaluation order.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define COPS_X86_DISPATCH 1
#include <immintrin.h>
#else
#define COPS_X86_DISPATCH 0
#endif

namespace cops {
namespace detail {

#if COPS_X86_DISPATCH
inline bool cpu_has_avx2() {
  static const bool have = __builtin_cpu_supports("avx2");
  return have;
}

// 4 values of a row as doubles (float32 rows widened exactly).
__attribute__((target("avx2"))) inline __m256d load4(const double* p) { return _mm256_loadu_pd(p); }
__attribute__((target("avx2"))) inline __m256d load4(const float* p) { return _mm256_cvtps_pd(_mm_loadu_ps(p)); }
#endif

#if COPS_X86_DISPATCH
// The AVX2 operations of row_min_absmax, for double (4 lanes) and float (8 lanes).
template <class T>
struct Avx2Ops;

template <>
struct Avx2Ops<double> {
  using V = __m256d;
  static constexpr int kLanes = 4;
  __attribute__((target("avx2"))) static V load(const double* p) { return _mm256_loadu_pd(p); }
  __attribute__((target("avx2"))) static V set1(double v) { return _mm256_set1_pd(v); }
  __attribute__((target("avx2"))) static V min(V a, V b) { return _mm256_min_pd(a, b); }
  __attribute__((target("avx2"))) static V max(V a, V b) { return _mm256_max_pd(a, b); }
  __attribute__((target("avx2"))) static V abs(V v) { return _mm256_andnot_pd(_mm256_set1_pd(-0.0), v); }
  __attribute__((target("avx2"))) static void store(double* p, V v) { _mm256_storeu_pd(p, v); }
};

template <>
struct Avx2Ops<float> {
  using V = __m256;
  static constexpr int kLanes = 8;
  __attribute__((target("avx2"))) static V load(const float* p) { return _mm256_loadu_ps(p); }
  __attribute__((target("avx2"))) static V set1(float v) { return _mm256_set1_ps(v); }
  __attribute__((target("avx2"))) static V min(V a, V b) { return _mm256_min_ps(a, b); }
  __attribute__((target("avx2"))) static V max(V a, V b) { return _mm256_max_ps(a, b); }
  __attribute__((target("avx2"))) static V abs(V v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v); }
  __attribute__((target("avx2"))) static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
};
#endif

// Folds min_k x[k] into lo and max_k |x[k]| into hi, k in [k0, K).
template <class T>
inline void fold_min_absmax(const T* x, int32_t k0, int32_t K, T* lo, T* hi) {
  for (int32_t k = k0; k < K; ++k) {
    *lo = x[k] < *lo ? x[k] : *lo;
    const T ax = std::fabs(x[k]);
    *hi = ax > *hi ? ax : *hi;
  }
}

#if COPS_X86_DISPATCH
template <class T>
__attribute__((target("avx2"))) inline void row_min_absmax_avx2(const T* x, int32_t K, double* mn, double* absmax) {
  using O = Avx2Ops<T>;
  constexpr int L = O::kLanes;
  typename O::V m = O::set1(std::numeric_limits<T>::infinity()), a = O::set1(T(0));
  int32_t k = 0;
  for (; k + L <= K; k += L) {
    const typename O::V v = O::load(x + k);
    m = O::min(m, v);
    a = O::max(a, O::abs(v));
  }
  T bm[L], ba[L];
  O::store(bm, m);
  O::store(ba, a);
  T lo = bm[0], hi = ba[0];
  for (int i = 1; i < L; ++i) {
    lo = bm[i] < lo ? bm[i] : lo;
    hi = ba[i] > hi ? ba[i] : hi;
  }
  fold_min_absmax(x, k, K, &lo, &hi);
  *mn = lo;  // exact: min / max of T values, widened
  *absmax = hi;
}
#endif

// min_k x[k] and max_k |x[k]| of a row of K >= 1 finite values, T = float or double (exact, as
// doubles); AVX2 from two vectors' worth of values on.
template <class T>
inline void row_min_absmax(const T* x, int32_t K, double* mn, double* absmax) {
#if COPS_X86_DISPATCH
  if (K >= 2 * Avx2Ops<T>::kLanes && cpu_has_avx2()) return row_min_absmax_avx2(x, K, mn, absmax);
#endif
  T lo = std::numeric_limits<T>::infinity(), hi = T(0);
  fold_min_absmax(x, 0, K, &lo, &hi);
  *mn = lo;
  *absmax = hi;
}

// First k with x[k] == v, for a v that occurs in x[0, K).
inline int32_t first_equal(const double* x, int32_t K, double v) {
  int32_t k = 0;
  while (!(x[k] == v)) ++k;
  return k;
}

#if COPS_X86_DISPATCH
__attribute__((target("avx2"))) inline int32_t first_equal_avx2(const float* x, int32_t K, float v) {
  const __m256 vv = _mm256_set1_ps(v);
  int32_t k = 0;
  for (; k + 8 <= K; k += 8) {
    const int mask = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + k), vv, _CMP_EQ_OQ));
    if (mask) return k + __builtin_ctz(static_cast<unsigned>(mask));
  }
  while (!(x[k] == v)) ++k;
  return k;
}
#endif

inline int32_t first_equal(const float* x, int32_t K, double v) {
  const float vf = static_cast<float>(v);  // exact: v is one of the floats
#if COPS_X86_DISPATCH
  if (K >= 16 && cpu_has_avx2()) return first_equal_avx2(x, K, vf);
#endif
  int32_t k = 0;
  while (!(x[k] == vf)) ++k;
  return k;
}

// argmin_k x[k] (lowest k on ties) of a row of K >= 1 finite values; writes the minimum to *mn and
// max_k |x[k]| to *absmax.
template <class T>
inline int32_t row_argmin_absmax(const T* x, int32_t K, double* mn, double* absmax) {
  double lo;
  row_min_absmax(x, K, &lo, absmax);
  const int32_t k = first_equal(x, K, lo);
  *mn = x[k];
  return k;
}

// argmin_k x[k] (lowest k on ties) of a row of K >= 1 finite values; writes the minimum to *mn.
inline int32_t row_argmin(const double* x, int32_t K, double* mn) {
  double lo, unused;
  row_min_absmax(x, K, &lo, &unused);
  int32_t k = 0;
  while (!(x[k] == lo)) ++k;
  *mn = x[k];
  return k;
}

}  // namespace detail
}  // namespace cops
