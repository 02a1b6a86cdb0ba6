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

__attribute__((target("avx2"))) inline void row_min_absmax_avx2(const double* x, int32_t K, double* mn,
                                                                   double* absmax) {
  constexpr double inf = std::numeric_limits<double>::infinity();
  const __m256d sign = _mm256_set1_pd(-0.0);
  __m256d m = _mm256_set1_pd(inf), a = _mm256_setzero_pd();
  int32_t k = 0;
  for (; k + 4 <= K; k += 4) {
    const __m256d v = _mm256_loadu_pd(x + k);
    m = _mm256_min_pd(m, v);
    a = _mm256_max_pd(a, _mm256_andnot_pd(sign, v));
  }
  double bm[4], ba[4];
  _mm256_storeu_pd(bm, m);
  _mm256_storeu_pd(ba, a);
  double lo = bm[0], hi = ba[0];
  for (int i = 1; i < 4; ++i) {
    lo = bm[i] < lo ? bm[i] : lo;
    hi = ba[i] > hi ? ba[i] : hi;
  }
  for (; k < K; ++k) {
    lo = x[k] < lo ? x[k] : lo;
    const double ax = std::fabs(x[k]);
    hi = ax > hi ? ax : hi;
  }
  *mn = lo;
  *absmax = hi;
}
#endif

#if COPS_X86_DISPATCH
__attribute__((target("avx2"))) inline void row_min_absmax_avx2(const float* x, int32_t K, double* mn,
                                                                   double* absmax) {
  constexpr float inf = std::numeric_limits<float>::infinity();
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 m = _mm256_set1_ps(inf), a = _mm256_setzero_ps();
  int32_t k = 0;
  for (; k + 8 <= K; k += 8) {
    const __m256 v = _mm256_loadu_ps(x + k);
    m = _mm256_min_ps(m, v);
    a = _mm256_max_ps(a, _mm256_andnot_ps(sign, v));
  }
  float bm[8], ba[8];
  _mm256_storeu_ps(bm, m);
  _mm256_storeu_ps(ba, a);
  float lo = bm[0], hi = ba[0];
  for (int i = 1; i < 8; ++i) {
    lo = bm[i] < lo ? bm[i] : lo;
    hi = ba[i] > hi ? ba[i] : hi;
  }
  for (; k < K; ++k) {
    lo = x[k] < lo ? x[k] : lo;
    const float ax = std::fabs(x[k]);
    hi = ax > hi ? ax : hi;
  }
  *mn = lo;  // exact: min / max of floats, widened
  *absmax = hi;
}
#endif

// min_k x[k] and max_k |x[k]| of a row of K >= 1 finite float32 values (exact, as doubles).
inline void row_min_absmax(const float* x, int32_t K, double* mn, double* absmax) {
#if COPS_X86_DISPATCH
  if (K >= 16 && cpu_has_avx2()) return row_min_absmax_avx2(x, K, mn, absmax);
#endif
  float lo = std::numeric_limits<float>::infinity(), hi = 0.0f;
  for (int32_t k = 0; k < K; ++k) {
    lo = x[k] < lo ? x[k] : lo;
    const float ax = std::fabs(x[k]);
    hi = ax > hi ? ax : hi;
  }
  *mn = lo;
  *absmax = hi;
}

// min_k x[k] and max_k |x[k]| of a row of K >= 1 finite values.
inline void row_min_absmax(const double* x, int32_t K, double* mn, double* absmax) {
#if COPS_X86_DISPATCH
  if (K >= 8 && cpu_has_avx2()) return row_min_absmax_avx2(x, K, mn, absmax);
#endif
  double lo = std::numeric_limits<double>::infinity(), hi = 0.0;
  for (int32_t k = 0; k < K; ++k) {
    lo = x[k] < lo ? x[k] : lo;
    const double ax = std::fabs(x[k]);
    hi = ax > hi ? ax : hi;
  }
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
