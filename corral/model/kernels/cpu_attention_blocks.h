// Register-blocked pieces of decode attention (cpu_kernels.cpp attend_range): for float, bf16 and
// fp16 caches in blocks of 16 tokens, a block's scores for up to four queries of a KV head, and
// their value sums, held in registers where the generic loop kept them in memory. The same FMAs
// in the same order as the generic loop, so the outputs are the same bits.
#pragma once

#include <torch/extension.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cpu_common.h"

namespace {

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define CORRAL_ATTENTION_AVX2 1
using corral_cpu::load_float8;

// scores[g][t] = sum_d q[g][d] * key[d][t] for G queries and a block of 16 tokens, keys stored
// [head_dim, 16]: the 2G sums stay in registers over d (the generic loop kept them in memory).
// The same FMAs in the same order (d ascending from zero) as the generic loop.
template <int G, typename C>
inline void block_scores(const float* q, int64_t head_dim, const C* keys, float* scores) {
  __m256 acc[G][2];
  for (int g = 0; g < G; ++g) acc[g][0] = acc[g][1] = _mm256_setzero_ps();
  for (int64_t d = 0; d < head_dim; ++d) {
    const __m256 k0 = load_float8(keys + d * 16), k1 = load_float8(keys + d * 16 + 8);
    for (int g = 0; g < G; ++g) {
      const __m256 qd = _mm256_broadcast_ss(q + g * head_dim + d);
      acc[g][0] = _mm256_fmadd_ps(qd, k0, acc[g][0]);
      acc[g][1] = _mm256_fmadd_ps(qd, k1, acc[g][1]);
    }
  }
  for (int g = 0; g < G; ++g) {
    _mm256_storeu_ps(scores + g * 16, acc[g][0]);
    _mm256_storeu_ps(scores + g * 16 + 8, acc[g][1]);
  }
}

// acc[g][i] += p[g][t] * value[t][i] for tokens t in [first, last) of a block, G queries, 16
// dims at a time held in registers over the tokens (t ascending, as the generic loop).
template <int G, typename C>
inline void block_values(const float* probs, const C* values, int64_t value_stride,
                         int64_t head_dim, int64_t first, int64_t last, float* acc) {
  for (int64_t i = 0; i < head_dim; i += 16) {
    __m256 sums[G][2];
    for (int g = 0; g < G; ++g) {
      sums[g][0] = _mm256_loadu_ps(acc + g * head_dim + i);
      sums[g][1] = _mm256_loadu_ps(acc + g * head_dim + i + 8);
    }
    for (int64_t t = first; t < last; ++t) {
      const C* v = values + t * value_stride + i;
      const __m256 v0 = load_float8(v), v1 = load_float8(v + 8);
      for (int g = 0; g < G; ++g) {
        const __m256 p = _mm256_broadcast_ss(probs + g * 16 + t);
        sums[g][0] = _mm256_fmadd_ps(p, v0, sums[g][0]);
        sums[g][1] = _mm256_fmadd_ps(p, v1, sums[g][1]);
      }
    }
    for (int g = 0; g < G; ++g) {
      _mm256_storeu_ps(acc + g * head_dim + i, sums[g][0]);
      _mm256_storeu_ps(acc + g * head_dim + i + 8, sums[g][1]);
    }
  }
}

// The register-blocked block of attend_range: queries in chunks of up to four.
template <typename C>
inline void block_scores_all(const float* q, int64_t group, int64_t head_dim, const C* keys,
                             float* scores) {
  for (int64_t g0 = 0; g0 < group; g0 += 4) {
    const float* qc = q + g0 * head_dim;
    float* sc = scores + g0 * 16;
    switch (std::min<int64_t>(4, group - g0)) {
      case 1: block_scores<1>(qc, head_dim, keys, sc); break;
      case 2: block_scores<2>(qc, head_dim, keys, sc); break;
      case 3: block_scores<3>(qc, head_dim, keys, sc); break;
      default: block_scores<4>(qc, head_dim, keys, sc); break;
    }
  }
}

template <typename C>
inline void block_values_all(const float* scores, int64_t group, const C* values,
                             int64_t value_stride, int64_t head_dim, int64_t first, int64_t last,
                             float* acc) {
  for (int64_t g0 = 0; g0 < group; g0 += 4) {
    const float* pc = scores + g0 * 16;
    float* ac = acc + g0 * head_dim;
    switch (std::min<int64_t>(4, group - g0)) {
      case 1: block_values<1>(pc, values, value_stride, head_dim, first, last, ac); break;
      case 2: block_values<2>(pc, values, value_stride, head_dim, first, last, ac); break;
      case 3: block_values<3>(pc, values, value_stride, head_dim, first, last, ac); break;
      default: block_values<4>(pc, values, value_stride, head_dim, first, last, ac); break;
    }
  }
}
#endif

}  // namespace
