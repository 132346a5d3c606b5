// Register-blocked pieces of decode attention (cpu_kernels.cpp attend_range): for float, bf16 and
// fp16 caches in blocks of 16 tokens, a block's scores for up to four queries of a KV head, and
// their value sums, held in registers where the generic loop kept them in memory. The same FMAs
// in the same order as the generic loop, so the outputs are the same bits.
//
// With AVX-512 (the *16 forms below): a block's 16 scores of a query are one register, and the
// scores of two blocks are taken together (each query's chain over the head dimension is one
// FMA after another, so two blocks give the core twice the independent chains); value sums hold
// up to 64 dimensions of up to eight queries in registers. Each lane does the same FMAs in the
// same order as in the eight-lane forms, so the outputs are the same bits.
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

#if defined(CORRAL_ATTENTION_AVX2) && defined(__AVX512F__)
#define CORRAL_ATTENTION_AVX512 1
using corral_cpu::load_float16;

// scores_b[g][t] = sum_d q[g][d] * keys_b[d][t] for G queries and B (1 or 2) blocks of 16 tokens,
// keys stored [head_dim, 16]; d ascending from zero, as block_scores.
template <int G, int B, typename C>
inline void block_scores16(const float* q, int64_t head_dim, const C* keys0, const C* keys1,
                           float* scores0, float* scores1) {
  __m512 acc[B][G];
  for (int b = 0; b < B; ++b) {
    for (int g = 0; g < G; ++g) acc[b][g] = _mm512_setzero_ps();
  }
  for (int64_t d = 0; d < head_dim; ++d) {
    __m512 k[B];
    k[0] = load_float16(keys0 + d * 16);
    if constexpr (B == 2) k[1] = load_float16(keys1 + d * 16);
    for (int g = 0; g < G; ++g) {
      const __m512 qd = _mm512_set1_ps(q[g * head_dim + d]);
      for (int b = 0; b < B; ++b) acc[b][g] = _mm512_fmadd_ps(qd, k[b], acc[b][g]);
    }
  }
  for (int g = 0; g < G; ++g) {
    _mm512_storeu_ps(scores0 + g * 16, acc[0][g]);
    if constexpr (B == 2) _mm512_storeu_ps(scores1 + g * 16, acc[1][g]);
  }
}

// block_scores16 over every query of the group, eight at a time.
template <int B, typename C>
inline void block_scores16_all(const float* q, int64_t group, int64_t head_dim, const C* keys0,
                               const C* keys1, float* scores0, float* scores1) {
  for (int64_t g0 = 0; g0 < group; g0 += 8) {
    const float* qc = q + g0 * head_dim;
    float* s0 = scores0 + g0 * 16;
    float* s1 = B == 2 ? scores1 + g0 * 16 : nullptr;
    switch (std::min<int64_t>(8, group - g0)) {
      case 1: block_scores16<1, B>(qc, head_dim, keys0, keys1, s0, s1); break;
      case 2: block_scores16<2, B>(qc, head_dim, keys0, keys1, s0, s1); break;
      case 3: block_scores16<3, B>(qc, head_dim, keys0, keys1, s0, s1); break;
      case 4: block_scores16<4, B>(qc, head_dim, keys0, keys1, s0, s1); break;
      case 5: block_scores16<5, B>(qc, head_dim, keys0, keys1, s0, s1); break;
      case 6: block_scores16<6, B>(qc, head_dim, keys0, keys1, s0, s1); break;
      case 7: block_scores16<7, B>(qc, head_dim, keys0, keys1, s0, s1); break;
      default: block_scores16<8, B>(qc, head_dim, keys0, keys1, s0, s1); break;
    }
  }
}

// acc[g][i0 + i] += p[g][t] * value[t][i0 + i] for i < 16 NC, tokens t in [first, last) (t
// ascending, as block_values), G queries.
template <int G, int NC, typename C>
inline void block_values16(const float* probs, const C* values, int64_t value_stride,
                           int64_t head_dim, int64_t i0, int64_t first, int64_t last,
                           float* acc) {
  __m512 sums[G][NC];
  for (int g = 0; g < G; ++g) {
    for (int c = 0; c < NC; ++c) sums[g][c] = _mm512_loadu_ps(acc + g * head_dim + i0 + 16 * c);
  }
  for (int64_t t = first; t < last; ++t) {
    const C* v = values + t * value_stride + i0;
    __m512 row[NC];
    for (int c = 0; c < NC; ++c) row[c] = load_float16(v + 16 * c);
    for (int g = 0; g < G; ++g) {
      const __m512 p = _mm512_set1_ps(probs[g * 16 + t]);
      for (int c = 0; c < NC; ++c) sums[g][c] = _mm512_fmadd_ps(p, row[c], sums[g][c]);
    }
  }
  for (int g = 0; g < G; ++g) {
    for (int c = 0; c < NC; ++c) _mm512_storeu_ps(acc + g * head_dim + i0 + 16 * c, sums[g][c]);
  }
}

template <int NC, typename C>
inline void block_values16_queries(const float* scores, int64_t group, const C* values,
                                   int64_t value_stride, int64_t head_dim, int64_t i0,
                                   int64_t first, int64_t last, float* acc) {
  // At most 16 sums in registers: eight queries of up to 32 dimensions, four of up to 64.
  constexpr int kQueries = NC <= 2 ? 8 : 4;
  for (int64_t g0 = 0; g0 < group; g0 += kQueries) {
    const float* pc = scores + g0 * 16;
    float* ac = acc + g0 * head_dim;
#define CORRAL_VALUES(G)                                                                        \
  case G:                                                                                       \
    if constexpr (G <= kQueries) {                                                              \
      block_values16<G, NC>(pc, values, value_stride, head_dim, i0, first, last, ac);            \
    }                                                                                           \
    break;
    switch (std::min<int64_t>(kQueries, group - g0)) {
      CORRAL_VALUES(1)
      CORRAL_VALUES(2)
      CORRAL_VALUES(3)
      CORRAL_VALUES(4)
      CORRAL_VALUES(5)
      CORRAL_VALUES(6)
      CORRAL_VALUES(7)
      CORRAL_VALUES(8)
      default: break;
    }
#undef CORRAL_VALUES
  }
}

// The value sums of a block for every query of the group, 64 dimensions at a time.
template <typename C>
inline void block_values16_all(const float* scores, int64_t group, const C* values,
                               int64_t value_stride, int64_t head_dim, int64_t first,
                               int64_t last, float* acc) {
  for (int64_t i0 = 0; i0 < head_dim; i0 += 64) {
    switch (std::min<int64_t>(4, (head_dim - i0) / 16)) {
      case 1:
        block_values16_queries<1>(scores, group, values, value_stride, head_dim, i0, first,
                                  last, acc);
        break;
      case 2:
        block_values16_queries<2>(scores, group, values, value_stride, head_dim, i0, first,
                                  last, acc);
        break;
      case 3:
        block_values16_queries<3>(scores, group, values, value_stride, head_dim, i0, first,
                                  last, acc);
        break;
      default:
        block_values16_queries<4>(scores, group, values, value_stride, head_dim, i0, first,
                                  last, acc);
        break;
    }
  }
}
#endif

}  // namespace
