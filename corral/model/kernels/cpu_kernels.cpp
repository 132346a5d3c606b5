// CPU kernels for corral's decode path: attention that reads the paged KV cache in place, and
// the module's bindings (the few-row linear is in cpu_linear.cpp, fused ops in cpu_fused.cpp).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>


#include "cpu_attention_blocks.h"
#include "cpu_common.h"
#include "cpu_ops.h"

namespace {

using corral_cpu::min_parallel_work;
using corral_cpu::fast_exp;
using corral_cpu::to_float;

template <typename T>
inline float dot_rows(const T* a, const T* b, int64_t n) {
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += to_float(a[i]) * to_float(b[i]);
  return sum;
}

// Keys [lo, hi) of one (request, kv head) into the running softmax (acc, running_max,
// running_sum), scored with the scaled query rows q [group, head_dim].
template <typename T, typename C, int64_t kHeadDim, int64_t kBlock>
void attend_range(const float* q, int64_t lo, int64_t hi, const C* key_cache,
                  const C* value_cache, const at::Half* key_scales,
                  const at::Half* value_scales, const int64_t* blocks, int64_t kv_head,
                  int64_t group, int64_t num_kv_heads, int64_t runtime_head_dim,
                  int64_t runtime_block_size, float* acc, float* scores, float* next_scores,
                  float* row, float* value, float* running_max, float* running_sum) {
  const int64_t head_dim = kHeadDim > 0 ? kHeadDim : runtime_head_dim;
  const int64_t block_size = kBlock > 0 ? kBlock : runtime_block_size;
  const int64_t value_stride = num_kv_heads * head_dim;
  bool next_ready = false;  // next_scores holds this block's scores (taken with the last)
  for (int64_t block = lo / block_size; block * block_size < hi; ++block) {
    const int64_t base = block * block_size;
    const int64_t first = std::max<int64_t>(lo - base, 0);
    const int64_t last = std::min<int64_t>(block_size, hi - base);
    const int64_t block_id = blocks[block];
    const C* keys = key_cache + (block_id * num_kv_heads + kv_head) * head_dim * block_size;
#if defined(CORRAL_ATTENTION_AVX2)
    // Float caches in blocks of 16, head_dim a multiple of 16: sums held in registers.
    constexpr bool kRegisterBlocks =
        kBlock == 16 && kHeadDim % 16 == 0 && kHeadDim > 0 &&
        (std::is_same_v<C, float> || std::is_same_v<C, at::BFloat16> ||
         std::is_same_v<C, at::Half>);
#else
    constexpr bool kRegisterBlocks = false;
#endif
    if constexpr (kRegisterBlocks) {
#if defined(CORRAL_ATTENTION_AVX512)
      if (next_ready) {
        std::swap(scores, next_scores);
        next_ready = false;
      } else if ((block + 1) * block_size < hi) {  // this block and the next together
        const C* next_keys =
            key_cache + (blocks[block + 1] * num_kv_heads + kv_head) * head_dim * block_size;
        block_scores16_all<2>(q, group, head_dim, keys, next_keys, scores, next_scores);
        next_ready = true;
      } else {
        block_scores16_all<1>(q, group, head_dim, keys, keys, scores, scores);
      }
#elif defined(CORRAL_ATTENTION_AVX2)
      block_scores_all(q, group, head_dim, keys, scores);
#endif
    } else {
      for (int64_t i = 0; i < group * block_size; ++i) scores[i] = 0.f;
      // scores[g][t] = sum_d q[g][d] * key[d][t]: vector work over the block's tokens.
      for (int64_t d = 0; d < head_dim; ++d) {
        const C* key_row = keys + d * block_size;
#pragma omp simd
        for (int64_t t = 0; t < block_size; ++t) row[t] = to_float(key_row[t]);
        for (int64_t g = 0; g < group; ++g) {
          const float qd = q[g * head_dim + d];
          float* s = scores + g * block_size;
#pragma omp simd
          for (int64_t t = 0; t < block_size; ++t) s[t] += qd * row[t];
        }
      }
    }
    const int64_t scale_base = block_id * block_size * num_kv_heads + kv_head;
#if defined(CORRAL_ATTENTION_AVX512)
    if constexpr (kRegisterBlocks) {
      // The block's sixteen scores in one register per query: max, exponentials and their sum
      // over the live tokens [first, last) in lanes (no scales: float and 16-bit caches).
      const __mmask16 live = static_cast<__mmask16>(((1u << last) - 1) & ~((1u << first) - 1));
      for (int64_t g = 0; g < group; ++g) {
        float* s = scores + g * block_size;
        const __m512 block_scores = _mm512_loadu_ps(s);
        const float new_max =
            std::max(running_max[g], _mm512_mask_reduce_max_ps(live, block_scores));
        const float correction =
            running_max[g] == -std::numeric_limits<float>::infinity()
                ? 0.f
                : fast_exp(running_max[g] - new_max);
        const __m512 exps = _mm512_maskz_mov_ps(
            live, corral_cpu::fast_exp16(_mm512_sub_ps(block_scores, _mm512_set1_ps(new_max))));
        _mm512_storeu_ps(s, exps);
        running_sum[g] = running_sum[g] * correction + _mm512_reduce_add_ps(exps);
        running_max[g] = new_max;
        float* a = acc + g * head_dim;
        const __m512 scale_by = _mm512_set1_ps(correction);
        for (int64_t i = 0; i < head_dim; i += 16) {
          _mm512_storeu_ps(a + i, _mm512_mul_ps(_mm512_loadu_ps(a + i), scale_by));
        }
      }
      const C* values =
          value_cache + (block_id * block_size * num_kv_heads + kv_head) * head_dim;
      block_values16_all(scores, group, values, value_stride, head_dim, first, last, acc);
      continue;
    }
#endif
    for (int64_t g = 0; g < group; ++g) {
      float* s = scores + g * block_size;
      float block_max = -std::numeric_limits<float>::infinity();
      for (int64_t t = first; t < last; ++t) {
        if (key_scales) s[t] *= to_float(key_scales[scale_base + t * num_kv_heads]);
        block_max = std::max(block_max, s[t]);
      }
      const float new_max = std::max(running_max[g], block_max);
      const float correction =
          running_max[g] == -std::numeric_limits<float>::infinity()
              ? 0.f
              : fast_exp(running_max[g] - new_max);
      running_sum[g] *= correction;
      float* a = acc + g * head_dim;
#pragma omp simd
      for (int64_t i = 0; i < head_dim; ++i) a[i] *= correction;
      float block_sum = 0.f;
#pragma omp simd reduction(+ : block_sum)
      for (int64_t t = first; t < last; ++t) {
        s[t] = fast_exp(s[t] - new_max);
        block_sum += s[t];
      }
      running_sum[g] += block_sum;
      running_max[g] = new_max;
    }
    const C* values = value_cache + (block_id * block_size * num_kv_heads + kv_head) * head_dim;
    if constexpr (kRegisterBlocks) {
#if defined(CORRAL_ATTENTION_AVX512)
      block_values16_all(scores, group, values, value_stride, head_dim, first, last, acc);
#elif defined(CORRAL_ATTENTION_AVX2)
      block_values_all(scores, group, values, value_stride, head_dim, first, last, acc);
#endif
      continue;
    }
    for (int64_t t = first; t < last; ++t) {
      const C* v = values + t * value_stride;
      const float v_scale =
          value_scales ? to_float(value_scales[scale_base + t * num_kv_heads]) : 1.f;
#pragma omp simd
      for (int64_t i = 0; i < head_dim; ++i) value[i] = to_float(v[i]) * v_scale;
      for (int64_t g = 0; g < group; ++g) {
        const float p = scores[g * block_size + t];
        float* a = acc + g * head_dim;
#pragma omp simd
        for (int64_t i = 0; i < head_dim; ++i) a[i] += p * value[i];
      }
    }
  }
}

// One (request, kv head) of decode attention with an online softmax over the request's blocks.
// query rows [num_heads, head_dim]; keys stored transposed per block [num_blocks, num_kv_heads,
// head_dim, block_size]; values [num_blocks, block_size, num_kv_heads, head_dim]; C is the
// cache's element type: T itself, or int8_t with float16 scales [num_blocks, block_size,
// num_kv_heads]. kHeadDim/kBlock > 0 fix those sizes at compile time (0: read at run time).
// With a window, keys [seq_len - window, seq_len); with sink_query too (attention sinks), also
// keys [0, num_sinks) below the window, scored with sink_query's rows instead of query's.
template <typename T, typename C, int64_t kHeadDim, int64_t kBlock>
void decode_one(T* out, const T* query, const T* sink_query, int64_t num_sinks,
                const C* key_cache, const C* value_cache,
                const at::Half* key_scales, const at::Half* value_scales,
                const int64_t* blocks, int64_t seq_len, int64_t kv_head, int64_t group,
                int64_t num_kv_heads, int64_t runtime_head_dim, int64_t runtime_block_size,
                float scale, int64_t window, std::vector<float>& buffer) {
  const int64_t head_dim = kHeadDim > 0 ? kHeadDim : runtime_head_dim;
  const int64_t block_size = kBlock > 0 ? kBlock : runtime_block_size;
  buffer.assign(group * head_dim * 3 + 2 * group * block_size + block_size + head_dim + 2 * group,
                0.f);
  float* q = buffer.data();                   // [group, head_dim], scaled
  float* q_sink = q + group * head_dim;       // [group, head_dim], scaled (sinks only)
  float* acc = q_sink + group * head_dim;     // [group, head_dim]
  float* scores = acc + group * head_dim;     // [group, block_size]
  float* row = scores + group * block_size;   // [block_size]: one key dimension, converted
  float* value = row + block_size;            // [head_dim]
  float* running_max = value + head_dim;      // [group]
  float* running_sum = running_max + group;   // [group]
  float* next_scores = running_sum + group;   // [group, block_size]: the next block's scores
  for (int64_t g = 0; g < group; ++g) {
    const T* query_row = query + (kv_head * group + g) * head_dim;
    for (int64_t i = 0; i < head_dim; ++i) q[g * head_dim + i] = to_float(query_row[i]) * scale;
    if (sink_query != nullptr) {
      const T* sink_row = sink_query + (kv_head * group + g) * head_dim;
      for (int64_t i = 0; i < head_dim; ++i) {
        q_sink[g * head_dim + i] = to_float(sink_row[i]) * scale;
      }
    }
    running_max[g] = -std::numeric_limits<float>::infinity();
  }
  const int64_t start = window > 0 ? std::max<int64_t>(0, seq_len - window) : 0;
  if (sink_query != nullptr && start > 0) {
    attend_range<T, C, kHeadDim, kBlock>(q_sink, 0, std::min(num_sinks, start), key_cache,
                                         value_cache, key_scales, value_scales, blocks, kv_head,
                                         group, num_kv_heads, head_dim, block_size, acc, scores,
                                         next_scores, row, value, running_max, running_sum);
  }
  attend_range<T, C, kHeadDim, kBlock>(q, start, seq_len, key_cache, value_cache, key_scales,
                                       value_scales, blocks, kv_head, group, num_kv_heads,
                                       head_dim, block_size, acc, scores, next_scores, row, value,
                                       running_max, running_sum);
  for (int64_t g = 0; g < group; ++g) {
    T* out_row = out + (kv_head * group + g) * head_dim;
    const float inverse = 1.f / running_sum[g];
    for (int64_t i = 0; i < head_dim; ++i) {
      out_row[i] = static_cast<T>(acc[g * head_dim + i] * inverse);
    }
  }
}

// Rows [0, num_rows) of a run (consecutive rows of one sequence: the same blocks, lengths
// seq_lens[0], seq_lens[0] + 1, ...: a request's verification rows), one kv head, no window or
// sinks. The keys of the whole blocks below the first row's length are read once for every row
// of the run (a group of num_rows * group queries); each row then takes its remaining keys
// alone. Every query sees the same blocks in the same order with the same arithmetic as in
// decode_one, so a row's output is the same bits alone or in a run.
template <typename T, typename C, int64_t kHeadDim, int64_t kBlock>
void decode_run(T* out, const T* query, int64_t num_rows, int64_t query_stride, int64_t out_stride,
                const C* key_cache, const C* value_cache, const at::Half* key_scales,
                const at::Half* value_scales, const int64_t* blocks, const int64_t* seq_lens,
                int64_t kv_head, int64_t group, int64_t num_kv_heads, int64_t runtime_head_dim,
                int64_t runtime_block_size, float scale, std::vector<float>& buffer) {
  const int64_t head_dim = kHeadDim > 0 ? kHeadDim : runtime_head_dim;
  const int64_t block_size = kBlock > 0 ? kBlock : runtime_block_size;
  const int64_t queries = num_rows * group;
  buffer.assign(queries * head_dim * 2 + 2 * queries * block_size + block_size + head_dim +
                    2 * queries, 0.f);
  float* q = buffer.data();                   // [num_rows, group, head_dim], scaled
  float* acc = q + queries * head_dim;        // [num_rows, group, head_dim]
  float* scores = acc + queries * head_dim;   // [queries, block_size]
  float* row = scores + queries * block_size; // [block_size]
  float* value = row + block_size;            // [head_dim]
  float* running_max = value + head_dim;      // [queries]
  float* running_sum = running_max + queries; // [queries]
  float* next_scores = running_sum + queries; // [queries, block_size]
  for (int64_t r = 0; r < num_rows; ++r) {
    for (int64_t g = 0; g < group; ++g) {
      const T* query_row = query + r * query_stride + (kv_head * group + g) * head_dim;
      float* q_row = q + (r * group + g) * head_dim;
      for (int64_t i = 0; i < head_dim; ++i) q_row[i] = to_float(query_row[i]) * scale;
      running_max[r * group + g] = -std::numeric_limits<float>::infinity();
    }
  }
  const int64_t shared = seq_lens[0] / block_size * block_size;
  attend_range<T, C, kHeadDim, kBlock>(q, 0, shared, key_cache, value_cache, key_scales,
                                       value_scales, blocks, kv_head, queries, num_kv_heads,
                                       head_dim, block_size, acc, scores, next_scores, row, value,
                                       running_max, running_sum);
  for (int64_t r = 0; r < num_rows; ++r) {
    const int64_t first = r * group;
    attend_range<T, C, kHeadDim, kBlock>(q + first * head_dim, shared, seq_lens[r], key_cache,
                                         value_cache, key_scales, value_scales, blocks, kv_head,
                                         group, num_kv_heads, head_dim, block_size,
                                         acc + first * head_dim, scores, next_scores, row, value,
                                         running_max + first, running_sum + first);
    for (int64_t g = 0; g < group; ++g) {
      T* out_row = out + r * out_stride + (kv_head * group + g) * head_dim;
      const float* a = acc + (first + g) * head_dim;
      const float inverse = 1.f / running_sum[first + g];
      for (int64_t i = 0; i < head_dim; ++i) out_row[i] = static_cast<T>(a[i] * inverse);
    }
  }
}

template <typename T, typename C>
void decode_all(torch::Tensor& out, const torch::Tensor& query, const torch::Tensor& key_cache,
                const torch::Tensor& value_cache, const at::Half* key_scales,
                const at::Half* value_scales, const int64_t* table, const int64_t* lengths,
                int64_t max_blocks, float scale, int64_t window,
                const c10::optional<torch::Tensor>& sink_query, int64_t num_sinks) {
  const int64_t num_seqs = query.size(0), num_heads = query.size(1), head_dim = query.size(2);
  const int64_t num_kv_heads = value_cache.size(2), block_size = value_cache.size(1);
  const int64_t group = num_heads / num_kv_heads;
  // Query rows may lie apart (views into a fused qkv row); out and sink_query are contiguous.
  const int64_t query_stride = query.stride(0), out_stride = num_heads * head_dim;
  T* out_ptr = out.data_ptr<T>();
  const T* q_ptr = query.data_ptr<T>();
  const T* sink_ptr = sink_query.has_value() ? sink_query->data_ptr<T>() : nullptr;
  const C* k_ptr = key_cache.data_ptr<C>();
  const C* v_ptr = value_cache.data_ptr<C>();
  // Split only work worth waking another thread for (a wake-up costs tens of microseconds with
  // passive OpenMP waits): chunks of at least min_parallel_work() multiply-adds.
  int64_t total_len = 0;
  for (int64_t seq = 0; seq < num_seqs; ++seq) total_len += lengths[seq];
  // Runs of rows of one sequence (decode_run): a row joins the run before it when its length is
  // one more and its blocks are the same. Without a window or sinks only.
  std::vector<int64_t> run_starts;
  for (int64_t seq = 0; seq < num_seqs; ++seq) {
    bool joins = false;
    if (seq > 0 && window == 0 && sink_ptr == nullptr && lengths[seq] == lengths[seq - 1] + 1) {
      const int64_t used = std::min(max_blocks, (lengths[seq] + block_size - 1) / block_size);
      joins = std::memcmp(table + seq * max_blocks, table + (seq - 1) * max_blocks,
                          used * sizeof(int64_t)) == 0;
    }
    if (!joins) run_starts.push_back(seq);
  }
  const int64_t num_runs = static_cast<int64_t>(run_starts.size());
  run_starts.push_back(num_seqs);
  const int64_t work_per_item =
      std::max<int64_t>(1, 2 * group * head_dim * total_len / std::max<int64_t>(1, num_runs));
  const int64_t grain = std::max<int64_t>(1, min_parallel_work() / work_per_item);
  at::parallel_for(0, num_runs * num_kv_heads, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> buffer;
    auto one = block_size != 16  ? &decode_one<T, C, 0, 0>
               : head_dim == 32  ? &decode_one<T, C, 32, 16>
               : head_dim == 64  ? &decode_one<T, C, 64, 16>
               : head_dim == 128 ? &decode_one<T, C, 128, 16>
                                 : &decode_one<T, C, 0, 16>;
    auto several = block_size != 16  ? &decode_run<T, C, 0, 0>
                   : head_dim == 32  ? &decode_run<T, C, 32, 16>
                   : head_dim == 64  ? &decode_run<T, C, 64, 16>
                   : head_dim == 128 ? &decode_run<T, C, 128, 16>
                                     : &decode_run<T, C, 0, 16>;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t run = item / num_kv_heads, kv_head = item % num_kv_heads;
      const int64_t seq = run_starts[run], num_rows = run_starts[run + 1] - seq;
      const int64_t offset = seq * out_stride;
      if (num_rows > 1) {
        several(out_ptr + offset, q_ptr + seq * query_stride, num_rows, query_stride, out_stride,
                k_ptr, v_ptr, key_scales, value_scales, table + seq * max_blocks, lengths + seq,
                kv_head, group, num_kv_heads, head_dim, block_size, scale, buffer);
        continue;
      }
      one(out_ptr + offset, q_ptr + seq * query_stride, sink_ptr ? sink_ptr + offset : nullptr,
          num_sinks,
          k_ptr, v_ptr, key_scales, value_scales, table + seq * max_blocks, lengths[seq],
          kv_head, group, num_kv_heads, head_dim, block_size, scale, window, buffer);
    }
  });
}

}  // namespace

// out [num_seqs, num_heads, head_dim] = attention of each sequence's single query (rows may lie
// apart, each row contiguous: the query part of a fused qkv) over its first
// seq_lens[i] cached tokens (the query's own K/V must already be written). Caches hold the
// query's dtype, or int8 with float16 scales [num_blocks, block_size, num_kv_heads]. With
// sink_query (like query) and a window: also the first num_sinks keys below each window,
// scored with sink_query (attention sinks, corral/model/layers/sink_attention.py).
void paged_decode_attention(torch::Tensor out, torch::Tensor query, torch::Tensor key_cache,
                            torch::Tensor value_cache, torch::Tensor block_table,
                            torch::Tensor seq_lens, double scale, int64_t window,
                            c10::optional<torch::Tensor> key_scale,
                            c10::optional<torch::Tensor> value_scale,
                            c10::optional<torch::Tensor> sink_query, int64_t num_sinks) {
  TORCH_CHECK(query.dim() == 3 && query.stride(2) == 1 && query.stride(1) == query.size(2) &&
                  query.stride(0) >= query.size(1) * query.size(2),
              "query must be [rows, heads, head_dim] with each row contiguous");
  TORCH_CHECK(out.is_contiguous() && out.sizes() == query.sizes(), "out must be contiguous");
  TORCH_CHECK(key_cache.is_contiguous() && value_cache.is_contiguous(), "caches not contiguous");
  TORCH_CHECK(block_table.scalar_type() == torch::kInt64 && block_table.is_contiguous());
  TORCH_CHECK(seq_lens.scalar_type() == torch::kInt64 && seq_lens.is_contiguous());
  const bool quantized = key_cache.scalar_type() == torch::kInt8;
  TORCH_CHECK(quantized == key_scale.has_value() && quantized == value_scale.has_value(),
              "int8 caches need scales, other caches none");
  TORCH_CHECK(quantized || key_cache.scalar_type() == query.scalar_type(), "cache dtype");
  TORCH_CHECK(!sink_query.has_value() ||
                  (sink_query->sizes() == query.sizes() && sink_query->is_contiguous() &&
                   sink_query->scalar_type() == query.scalar_type()),
              "sink_query must be like query");
  const at::Half* key_scales = quantized ? key_scale->data_ptr<at::Half>() : nullptr;
  const at::Half* value_scales = quantized ? value_scale->data_ptr<at::Half>() : nullptr;
  const int64_t* table = block_table.data_ptr<int64_t>();
  const int64_t* lengths = seq_lens.data_ptr<int64_t>();
  const int64_t max_blocks = block_table.size(1);
  const float scale_f = static_cast<float>(scale);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, query.scalar_type(), "decode", [&] {
    if (quantized) {
      decode_all<scalar_t, int8_t>(out, query, key_cache, value_cache, key_scales, value_scales,
                                   table, lengths, max_blocks, scale_f, window, sink_query,
                                   num_sinks);
    } else {
      decode_all<scalar_t, scalar_t>(out, query, key_cache, value_cache, nullptr, nullptr,
                                     table, lengths, max_blocks, scale_f, window, sink_query,
                                     num_sinks);
    }
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("paged_decode_attention", &paged_decode_attention, "decode attention over paged KV");
  m.def("prefill_attention", &prefill_attention, "causal attention of short fresh prompts");
  m.def("prefill_attention_max_tokens", &prefill_attention_max_tokens,
        "the longest prompt prefill_attention is used for");
  m.def("few_row_linear", &few_row_linear, "x @ weight.T for few rows");
  m.def("few_row_linear_silu", &few_row_linear_silu,
        "silu(gate) * up of a gate/up projection (AMX tiles in one pass)");
  m.def("packed_weights_supported", &packed_weights_supported,
        "whether few_row_linear reads packed bf16 weights here");
  m.def("packed_rows", &packed_rows, "rows of a packed weight in the plain layout");
  m.def("amx_tiles_supported", &amx_tiles_supported,
        "whether few_row_linear multiplies bf16 weights packed as tiles on AMX here");
  m.def("allow_amx_tiles", &allow_amx_tiles,
        "False: tiled weights take the dot-product kernel even where AMX runs (for tests)");
  m.def("set_dot_tiles_form", &set_dot_tiles_form,
        "the form dot_tiles_linear runs in: 0 vdpbf16ps, 1 float32 FMAs (chosen at start-up)");
  m.def("dot_tiles_form", &dot_tiles_form, "the form dot_tiles_linear runs in");
  m.def("dot_tiles_supported", &dot_tiles_supported,
        "whether this build multiplies bf16 tiles with AVX-512 bf16 dot products");
  m.def("tiles_supported", [] { return amx_tiles_supported() || dot_tiles_supported(); },
        "whether few_row_linear reads bf16 weights packed as tiles here");
  m.def("dot_tiles_linear", &dot_tiles_linear,
        "x @ W.T over tiles with AVX-512 bf16 dot products (what few_row_linear runs without AMX)");
  m.def("dot_tiles_linear_silu", &dot_tiles_linear_silu,
        "silu(gate) * up over gate/up tiles with AVX-512 bf16 dot products");
  m.def("rms_norm", &rms_norm, "RMSNorm, optionally adding a residual in place first");
  m.def("rotary_inplace", &rotary_inplace, "rotary embedding of q and k heads in place");
  m.def("silu_and_mul", &silu_and_mul, "silu(gate) * up");
  m.def("argmax_rows", &argmax_rows, "each row's argmax, as torch's argmax chooses");
  m.def("write_kv_cache", &write_kv_cache, "store new tokens' K and V at their slots");
  m.def("lora_shrink_expand", &lora_shrink_expand, "out[rows] += B_slot A_slot x per segment");
  m.def("int8_linear", &int8_linear, "x @ dequant(int8 weight).T, weight-only int8");
  m.def("int8_panels_supported", &int8_panels_supported,
        "whether int8_linear reads int8 weights packed in panels here");
  m.def(
      "set_min_parallel_work",
      [](int64_t multiply_adds) {
        corral_cpu::min_parallel_work() = std::max<int64_t>(1, multiply_adds);
      },
      "the least multiply-adds a parallel chunk gets (cpu_common.h)");
  bind_layer_loop(m);
}
