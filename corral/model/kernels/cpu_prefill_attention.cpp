// Causal attention of short fresh prompts (no cached context, no window, no sinks), all of a
// step's spans in one call: a batch of 32 prompts of 64 tokens took one Python-and-torch loop
// per span and layer (about 0.2 ms each, 188 ms of a 631 ms prefill step on the SmolLM-135M
// shape) for a few MFLOP of work. All in float32 (scores, softmax weights by the decode
// kernel's exp polynomial, their sums with the values, divided by the weights' sum at the end)
// and rounded to the model dtype once: closer to exact than the torch path, which rounds the
// scores and the probabilities to bf16 where the CPU multiplies bf16 natively.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "cpu_common.h"

namespace {

using corral_cpu::fast_exp;
using corral_cpu::to_float;

constexpr int64_t kRowsPerBlock = 4;  // query rows whose scores and sums share registers

// One query row's softmax weights over its first `seen` keys (scores[0, seen)), in place and
// not normalized: exp(score - max), by the decode kernel's polynomial; scores[seen, width) set
// to zero. Returns their sum (the caller divides the value sums by it).
inline float softmax_weights(float* scores, int64_t seen, int64_t width) {
  float max_score = -std::numeric_limits<float>::infinity();
  int64_t j = 0;
#if defined(__AVX512F__)
  __m512 maxima = _mm512_set1_ps(max_score);
  for (; j + 16 <= seen; j += 16) maxima = _mm512_max_ps(maxima, _mm512_loadu_ps(scores + j));
  max_score = _mm512_reduce_max_ps(maxima);
#endif
  for (; j < seen; ++j) max_score = std::max(max_score, scores[j]);
  float total = 0.f;
  j = 0;
#if defined(__AVX512F__)
  const __m512 top = _mm512_set1_ps(max_score);
  __m512 sums = _mm512_setzero_ps();
  for (; j + 16 <= seen; j += 16) {
    const __m512 e = corral_cpu::fast_exp16(_mm512_sub_ps(_mm512_loadu_ps(scores + j), top));
    _mm512_storeu_ps(scores + j, e);
    sums = _mm512_add_ps(sums, e);
  }
  total = _mm512_reduce_add_ps(sums);
#endif
  for (; j < seen; ++j) {
    scores[j] = fast_exp(scores[j] - max_score);
    total += scores[j];
  }
  for (j = seen; j < width; ++j) scores[j] = 0.f;
  return total;
}

#if defined(__AVX512F__)
// Scores of R query rows over keys [16 jb, 16 jb + 16): sums held in registers over head_dim.
template <int R>
inline void score_block(const float* queries, const float* keys_t, int64_t head_dim,
                        int64_t width, int64_t jb, float* scores) {
  __m512 sums[R];
  for (int r = 0; r < R; ++r) sums[r] = _mm512_setzero_ps();
  for (int64_t d = 0; d < head_dim; ++d) {
    const __m512 k = _mm512_loadu_ps(keys_t + d * width + jb * 16);
    for (int r = 0; r < R; ++r) {
      sums[r] = _mm512_fmadd_ps(_mm512_set1_ps(queries[r * head_dim + d]), k, sums[r]);
    }
  }
  for (int r = 0; r < R; ++r) _mm512_storeu_ps(scores + r * width + jb * 16, sums[r]);
}

// acc[r][d0, d0 + 16 C) = sum over keys j < seen of p[r][j] * value[j][...], for R rows.
template <int R, int C>
inline void value_block(const float* probs, const float* values, int64_t head_dim,
                        int64_t width, int64_t seen, int64_t d0, float* acc) {
  __m512 sums[R][C];
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < C; ++c) sums[r][c] = _mm512_setzero_ps();
  }
  for (int64_t j = 0; j < seen; ++j) {
    __m512 v[C];
    for (int c = 0; c < C; ++c) v[c] = _mm512_loadu_ps(values + j * head_dim + d0 + 16 * c);
    for (int r = 0; r < R; ++r) {
      const __m512 p = _mm512_set1_ps(probs[r * width + j]);
      for (int c = 0; c < C; ++c) sums[r][c] = _mm512_fmadd_ps(p, v[c], sums[r][c]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < C; ++c) _mm512_storeu_ps(acc + r * head_dim + d0 + 16 * c, sums[r][c]);
  }
}

template <int R>
inline void value_blocks(const float* probs, const float* values, int64_t head_dim,
                         int64_t width, int64_t seen, float* acc) {
  for (int64_t d0 = 0; d0 < head_dim; d0 += 64) {
    switch ((head_dim - d0) >= 64 ? 4 : (head_dim - d0) / 16) {
      case 1: value_block<R, 1>(probs, values, head_dim, width, seen, d0, acc); break;
      case 2: value_block<R, 2>(probs, values, head_dim, width, seen, d0, acc); break;
      case 3: value_block<R, 3>(probs, values, head_dim, width, seen, d0, acc); break;
      default: value_block<R, 4>(probs, values, head_dim, width, seen, d0, acc); break;
    }
  }
}
#endif

// One (span, kv head): rows [start, end) of query/key/value, group query heads per kv head.
// Query rows (row i's heads one after another) go in blocks of four: with AVX-512 and head_dim
// a multiple of 16, their scores over 16 keys at a time and their value sums over 16 dims at
// a time are held in registers (keys transposed, [head_dim, n rounded up to 16], in float32).
template <typename T>
void attend_span(T* out, const T* query, const T* key, const T* value, int64_t start, int64_t end,
                 int64_t kv_head, int64_t group, int64_t head_dim, int64_t q_row_stride,
                 int64_t key_row_stride, int64_t value_row_stride, int64_t out_row_stride,
                 float scale, std::vector<float>& buffer) {
  const int64_t n = end - start, width = (n + 15) / 16 * 16, num_rows = n * group;
  buffer.resize(head_dim * width + n * head_dim + num_rows * head_dim +
                kRowsPerBlock * (width + head_dim));
  float* keys_t = buffer.data();                  // [head_dim, width]
  float* values = keys_t + head_dim * width;      // [n, head_dim]
  float* queries = values + n * head_dim;         // [num_rows, head_dim], scaled
  float* scores = queries + num_rows * head_dim;  // [kRowsPerBlock, width]
  float* acc = scores + kRowsPerBlock * width;    // [kRowsPerBlock, head_dim]
  for (int64_t d = 0; d < head_dim; ++d) {
    for (int64_t t = n; t < width; ++t) keys_t[d * width + t] = 0.f;
  }
  for (int64_t t = 0; t < n; ++t) {
    const T* k = key + (start + t) * key_row_stride + kv_head * head_dim;
    const T* v = value + (start + t) * value_row_stride + kv_head * head_dim;
    for (int64_t d = 0; d < head_dim; ++d) {
      keys_t[d * width + t] = to_float(k[d]);
      values[t * head_dim + d] = to_float(v[d]);
    }
    for (int64_t g = 0; g < group; ++g) {
      const T* q = query + (start + t) * q_row_stride + (kv_head * group + g) * head_dim;
      float* row = queries + (t * group + g) * head_dim;
      for (int64_t d = 0; d < head_dim; ++d) row[d] = to_float(q[d]) * scale;
    }
  }
#if defined(__AVX512F__)
  const bool blocked = head_dim % 16 == 0;
#else
  const bool blocked = false;
#endif
  for (int64_t r0 = 0; r0 < num_rows; r0 += kRowsPerBlock) {
    const int64_t rows = std::min(kRowsPerBlock, num_rows - r0);
    const int64_t last_seen = (r0 + rows - 1) / group + 1;  // keys the block's last row sees
    const int64_t key_blocks = (last_seen + 15) / 16;
    if (blocked) {
#if defined(__AVX512F__)
      const float* q = queries + r0 * head_dim;
      for (int64_t jb = 0; jb < key_blocks; ++jb) {
        switch (rows) {
          case 1: score_block<1>(q, keys_t, head_dim, width, jb, scores); break;
          case 2: score_block<2>(q, keys_t, head_dim, width, jb, scores); break;
          case 3: score_block<3>(q, keys_t, head_dim, width, jb, scores); break;
          default: score_block<4>(q, keys_t, head_dim, width, jb, scores); break;
        }
      }
#endif
    } else {
      for (int64_t r = 0; r < rows; ++r) {
        float* s = scores + r * width;
        for (int64_t j = 0; j < last_seen; ++j) s[j] = 0.f;
        for (int64_t d = 0; d < head_dim; ++d) {
          const float qd = queries[(r0 + r) * head_dim + d];
          const float* k = keys_t + d * width;
#pragma omp simd
          for (int64_t j = 0; j < last_seen; ++j) s[j] += qd * k[j];
        }
      }
    }
    float totals[kRowsPerBlock];
    for (int64_t r = 0; r < rows; ++r) {
      totals[r] = softmax_weights(scores + r * width, (r0 + r) / group + 1, key_blocks * 16);
    }
    if (blocked) {
#if defined(__AVX512F__)
      switch (rows) {
        case 1: value_blocks<1>(scores, values, head_dim, width, last_seen, acc); break;
        case 2: value_blocks<2>(scores, values, head_dim, width, last_seen, acc); break;
        case 3: value_blocks<3>(scores, values, head_dim, width, last_seen, acc); break;
        default: value_blocks<4>(scores, values, head_dim, width, last_seen, acc); break;
      }
#endif
    } else {
      for (int64_t r = 0; r < rows; ++r) {
        float* a = acc + r * head_dim;
        for (int64_t d = 0; d < head_dim; ++d) a[d] = 0.f;
        for (int64_t j = 0; j < last_seen; ++j) {
          const float p = scores[r * width + j];
          const float* v = values + j * head_dim;
#pragma omp simd
          for (int64_t d = 0; d < head_dim; ++d) a[d] += p * v[d];
        }
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = (r0 + r) / group, head = kv_head * group + (r0 + r) % group;
      T* out_row = out + (start + i) * out_row_stride + head * head_dim;
      const float inverse = 1.f / totals[r];
      for (int64_t d = 0; d < head_dim; ++d) {
        out_row[d] = static_cast<T>(acc[r * head_dim + d] * inverse);
      }
    }
  }
}

}  // namespace

// The longest prompt worth this kernel here: measured with the AVX-512 register blocks (faster
// than the torch loop up to 4,096 tokens on the AMX Xeon); the generic loops' build (AVX2 and
// older) keeps it to short prompts, where the torch loop's per-span cost dominates.
int64_t prefill_attention_max_tokens() {
#if defined(__AVX512F__)
  return 4096;
#else
  return 128;
#endif
}

// out[rows of each span] = causal attention of the span's queries over the span's own keys and
// values. query/out [tokens, num_heads, head_dim] (rows at any stride, heads contiguous);
// key/value [tokens, num_kv_heads, head_dim] likewise; spans [num_spans, 2]: each span's rows
// [start, end).
void prefill_attention(torch::Tensor out, torch::Tensor query, torch::Tensor key,
                       torch::Tensor value, torch::Tensor spans, double scale) {
  TORCH_CHECK(query.dim() == 3 && key.dim() == 3 && value.dim() == 3 && out.dim() == 3,
              "prefill_attention: [tokens, heads, head_dim] tensors");
  TORCH_CHECK(out.sizes() == query.sizes() && key.sizes() == value.sizes() &&
                  key.size(0) == query.size(0) && key.size(2) == query.size(2),
              "prefill_attention: query/out and key/value shapes disagree");
  for (const torch::Tensor* t : {&out, &query, &key, &value}) {
    TORCH_CHECK(t->stride(2) == 1 && t->stride(1) == t->size(2) &&
                    t->scalar_type() == query.scalar_type(),
                "prefill_attention: heads contiguous, one dtype");
  }
  TORCH_CHECK(spans.dim() == 2 && spans.size(1) == 2 && spans.scalar_type() == torch::kInt64 &&
                  spans.is_contiguous(),
              "prefill_attention: spans as int64 [num_spans, 2]");
  const int64_t num_heads = query.size(1), num_kv_heads = key.size(1), head_dim = query.size(2);
  TORCH_CHECK(num_heads % num_kv_heads == 0, "prefill_attention: heads per kv head");
  const int64_t group = num_heads / num_kv_heads, num_spans = spans.size(0);
  const int64_t* span_rows = spans.data_ptr<int64_t>();
  for (int64_t s = 0; s < num_spans; ++s) {
    TORCH_CHECK(0 <= span_rows[2 * s] && span_rows[2 * s] <= span_rows[2 * s + 1] &&
                    span_rows[2 * s + 1] <= query.size(0),
                "prefill_attention: span ", s, " outside the rows");
  }
  const float scale_f = static_cast<float>(scale);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, query.scalar_type(), "prefill", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    const scalar_t* q = query.data_ptr<scalar_t>();
    const scalar_t* k = key.data_ptr<scalar_t>();
    const scalar_t* v = value.data_ptr<scalar_t>();
    at::parallel_for(0, num_spans * num_kv_heads, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> buffer;
      for (int64_t item = begin; item < end; ++item) {
        const int64_t s = item / num_kv_heads, kv_head = item % num_kv_heads;
        attend_span<scalar_t>(o, q, k, v, span_rows[2 * s], span_rows[2 * s + 1], kv_head, group,
                              head_dim, query.stride(0), key.stride(0), value.stride(0),
                              out.stride(0), scale_f, buffer);
      }
    });
  });
}
