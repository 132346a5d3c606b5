// The LoRA delta of one linear for a batch mixing adapters (the Punica / S-LoRA grouping): per
// segment of rows sharing an adapter slot, a shrink h = A_slot x (rank values per fused part)
// and an expand out += B_slot h, both accumulated in float32, in one call for all segments.
// Layouts and semantics: corral/lora/apply.py (add_lora_reference is the PyTorch reference).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define CORRAL_LORA_AVX2 1
#endif

#include "cpu_common.h"

using corral_cpu::kMinParallelWork;
using corral_cpu::to_float;

namespace {

// Rows of one segment processed together: each A and B row is read once per tile.
constexpr int64_t kTileRows = 8;
// Output columns whose expand sums are formed and reduced together.
constexpr int64_t kOutBlock = 8;

inline int64_t round_up8(int64_t n) { return (n + 7) / 8 * 8; }

#if defined(CORRAL_LORA_AVX2)
inline __m256 load_eight(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load_eight(const at::BFloat16* p) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}
inline __m256 load_eight(const at::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

inline float sum_lanes(__m256 v) {
  const __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 pair = _mm_add_ps(half, _mm_movehl_ps(half, half));
  return _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)));
}

// Lane k of the result: the sum of v[k]'s eight lanes.
inline __m256 sum_lanes_of_eight(const __m256* v) {
  const __m256 s0123 = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
  const __m256 s4567 = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(s0123, s4567, 0x20),
                       _mm256_permute2f128_ps(s0123, s4567, 0x31));
}
#endif

#if defined(__AVX512F__)
inline __m512 load_sixteen(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load_sixteen(const at::BFloat16* p) {
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}
inline __m512 load_sixteen(const at::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
#endif

// dst[i] = float(src[i]) for i < n.
template <typename T>
inline void convert_to_float(const T* src, float* dst, int64_t n) {
  int64_t i = 0;
#if defined(CORRAL_LORA_AVX2)
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load_eight(src + i));
#endif
  for (; i < n; ++i) dst[i] = to_float(src[i]);
}

// sums[t] = a_row . xs[t] over in elements, for the N rows xs (float), each a_row chunk loaded
// once for all N rows.
template <int N, typename T>
inline void dot_rows_tile(const T* a_row, const float* const* xs, int64_t in, float* sums) {
  int64_t i = 0;
  float acc_tail[N] = {};
#if defined(__AVX512F__)
  {
    __m512 acc[N];
    for (int t = 0; t < N; ++t) acc[t] = _mm512_setzero_ps();
    for (; i + 16 <= in; i += 16) {
      const __m512 a = load_sixteen(a_row + i);
      for (int t = 0; t < N; ++t) acc[t] = _mm512_fmadd_ps(a, _mm512_loadu_ps(xs[t] + i), acc[t]);
    }
    for (int t = 0; t < N; ++t) acc_tail[t] = _mm512_reduce_add_ps(acc[t]);
  }
#endif
#if defined(CORRAL_LORA_AVX2)
  {
    __m256 acc[N];
    for (int t = 0; t < N; ++t) acc[t] = _mm256_setzero_ps();
    for (; i + 8 <= in; i += 8) {
      const __m256 a = load_eight(a_row + i);
      for (int t = 0; t < N; ++t) acc[t] = _mm256_fmadd_ps(a, _mm256_loadu_ps(xs[t] + i), acc[t]);
    }
    for (int t = 0; t < N; ++t) acc_tail[t] += sum_lanes(acc[t]);
  }
#endif
  for (; i < in; ++i) {
    const float a = to_float(a_row[i]);
    for (int t = 0; t < N; ++t) acc_tail[t] += a * xs[t][i];
  }
  for (int t = 0; t < N; ++t) sums[t] = acc_tail[t];
}

template <typename T>
inline void dot_rows_any(const T* a_row, const float* const* xs, int64_t n, int64_t in,
                         float* sums) {
  switch (n) {
    case 1: dot_rows_tile<1>(a_row, xs, in, sums); break;
    case 2: dot_rows_tile<2>(a_row, xs, in, sums); break;
    case 3: dot_rows_tile<3>(a_row, xs, in, sums); break;
    case 4: dot_rows_tile<4>(a_row, xs, in, sums); break;
    case 5: dot_rows_tile<5>(a_row, xs, in, sums); break;
    case 6: dot_rows_tile<6>(a_row, xs, in, sums); break;
    case 7: dot_rows_tile<7>(a_row, xs, in, sums); break;
    default: dot_rows_tile<8>(a_row, xs, in, sums); break;
  }
}

// out[row] += round(delta) for one output element, as the reference's index_add_ does it.
template <typename T>
inline void add_delta(T* out, float delta) {
  *out = static_cast<T>(to_float(*out) + to_float(static_cast<T>(delta)));
}

struct Problem {
  int64_t in, out_features, num_parts, max_rank, a_slot_stride, b_slot_stride;
  const int64_t* part_offsets;  // [num_parts + 1]
  const int64_t* rows;
  const int64_t* seg_starts;
  const int64_t* seg_slots;
  const int64_t* seg_ranks;
};

// One tile: rows[begin:end] of segment seg (at most kTileRows rows).
template <typename T>
void lora_tile(const Problem& p, T* out, const T* x, const T* a, const T* b, int64_t seg,
               int64_t begin, int64_t end) {
  const int64_t n = end - begin, rank = p.seg_ranks[seg];
  if (n <= 0 || rank == 0) return;
  const int64_t in = p.in, rank_pad = round_up8(rank), h_stride = p.num_parts * rank_pad;
  const T* a_slot = a + p.seg_slots[seg] * p.a_slot_stride;
  const T* b_slot = b + p.seg_slots[seg] * p.b_slot_stride;

  // The tile's x rows as float (converted once; float32 x is read in place).
  std::vector<float> x_float;
  const float* xs[kTileRows];
  if constexpr (std::is_same_v<T, float>) {
    for (int64_t t = 0; t < n; ++t) xs[t] = x + p.rows[begin + t] * in;
  } else {
    x_float.resize(n * in);
    for (int64_t t = 0; t < n; ++t) {
      convert_to_float(x + p.rows[begin + t] * in, x_float.data() + t * in, in);
      xs[t] = x_float.data() + t * in;
    }
  }

  // Shrink: h[t][part * rank_pad + j] = A[part * max_rank + j] . x[t] for j < rank; zero above.
  std::vector<float> h(n * h_stride, 0.f);
  float sums[kTileRows];
  for (int64_t part = 0; part < p.num_parts; ++part) {
    for (int64_t j = 0; j < rank; ++j) {
      dot_rows_any(a_slot + (part * p.max_rank + j) * in, xs, n, in, sums);
      for (int64_t t = 0; t < n; ++t) h[t * h_stride + part * rank_pad + j] = sums[t];
    }
  }

  // Expand: delta[t][o] = B[o, :rank] . h[t][part(o) * rank_pad, +rank), kOutBlock columns at a
  // time; the block's B rows are converted once (zero-padded to rank_pad, never read above rank).
  std::vector<float> b_float(kOutBlock * rank_pad, 0.f);
  int64_t part = 0;
  for (int64_t o0 = 0; o0 < p.out_features; o0 += kOutBlock) {
    const int64_t count = std::min(kOutBlock, p.out_features - o0);
    int64_t h_offset[kOutBlock];
    for (int64_t k = 0; k < count; ++k) {
      while (o0 + k >= p.part_offsets[part + 1]) ++part;
      h_offset[k] = part * rank_pad;
      convert_to_float(b_slot + (o0 + k) * p.max_rank, b_float.data() + k * rank_pad, rank);
    }
    for (int64_t t = 0; t < n; ++t) {
      const float* h_row = h.data() + t * h_stride;
      T* out_row = out + p.rows[begin + t] * p.out_features + o0;
#if defined(CORRAL_LORA_AVX2)
      if (count == kOutBlock) {
        __m256 acc[kOutBlock];
        for (int64_t k = 0; k < kOutBlock; ++k) {
          const float* bk = b_float.data() + k * rank_pad;
          const float* hk = h_row + h_offset[k];
          acc[k] = _mm256_mul_ps(_mm256_loadu_ps(bk), _mm256_loadu_ps(hk));
          for (int64_t j = 8; j < rank_pad; j += 8) {
            acc[k] = _mm256_fmadd_ps(_mm256_loadu_ps(bk + j), _mm256_loadu_ps(hk + j), acc[k]);
          }
        }
        float delta[kOutBlock];
        _mm256_storeu_ps(delta, sum_lanes_of_eight(acc));
        for (int64_t k = 0; k < kOutBlock; ++k) add_delta(out_row + k, delta[k]);
        continue;
      }
#endif
      for (int64_t k = 0; k < count; ++k) {
        const float* bk = b_float.data() + k * rank_pad;
        const float* hk = h_row + h_offset[k];
        float sum = 0.f;
        for (int64_t j = 0; j < rank; ++j) sum += bk[j] * hk[j];
        add_delta(out_row + k, sum);
      }
    }
  }
}

void check_int64_vector(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "lora_shrink_expand: ", name, " must be on the CPU");
  TORCH_CHECK(t.scalar_type() == at::kLong, "lora_shrink_expand: ", name, " must be int64, got ",
              t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.is_contiguous(), "lora_shrink_expand: ", name,
              " must be a contiguous 1-D tensor");
}

}  // namespace

// out[rows[r]] += B_slot (A_slot x[rows[r]]) for every row r of every segment, in place.
// out [num_rows, out_features], x [num_rows, in_features], a [num_slots, num_parts * max_rank,
// in_features], b [num_slots, out_features, max_rank] (one dtype: float32, bfloat16, float16);
// part_offsets int64 [num_parts + 1]: the output columns of each fused part; rows, seg_starts,
// seg_slots, seg_ranks int64 as in corral.lora.batch.LoRABatch (each row at most once).
void lora_shrink_expand(torch::Tensor out, torch::Tensor x, torch::Tensor a, torch::Tensor b,
                        torch::Tensor part_offsets, torch::Tensor rows, torch::Tensor seg_starts,
                        torch::Tensor seg_slots, torch::Tensor seg_ranks) {
  const std::pair<const torch::Tensor*, const char*> floats[] = {
      {&out, "out"}, {&x, "x"}, {&a, "a"}, {&b, "b"}};
  for (const auto& [t, name] : floats) {
    TORCH_CHECK(t->device().is_cpu(), "lora_shrink_expand: ", name, " must be on the CPU");
    TORCH_CHECK(t->is_contiguous(), "lora_shrink_expand: ", name, " must be contiguous");
    TORCH_CHECK(t->scalar_type() == out.scalar_type(), "lora_shrink_expand: ", name, " is ",
                t->scalar_type(), " but out is ", out.scalar_type());
  }
  TORCH_CHECK(out.scalar_type() == at::kFloat || out.scalar_type() == at::kBFloat16 ||
                  out.scalar_type() == at::kHalf,
              "lora_shrink_expand: dtype must be float32, bfloat16 or float16, got ",
              out.scalar_type());
  TORCH_CHECK(out.dim() == 2 && x.dim() == 2 && a.dim() == 3 && b.dim() == 3,
              "lora_shrink_expand: out and x must be 2-D, a and b 3-D");
  const int64_t num_rows = out.size(0), out_features = out.size(1), in = x.size(1);
  const int64_t num_slots = a.size(0), max_rank = b.size(2);
  TORCH_CHECK(x.size(0) == num_rows, "lora_shrink_expand: x has ", x.size(0), " rows, out ",
              num_rows);
  TORCH_CHECK(a.size(2) == in, "lora_shrink_expand: a's in_features ", a.size(2), " != x's ", in);
  TORCH_CHECK(b.size(0) == num_slots && b.size(1) == out_features,
              "lora_shrink_expand: b must be [num_slots=", num_slots, ", out_features=",
              out_features, ", max_rank], got ", b.sizes());
  check_int64_vector(part_offsets, "part_offsets");
  check_int64_vector(rows, "rows");
  check_int64_vector(seg_starts, "seg_starts");
  check_int64_vector(seg_slots, "seg_slots");
  check_int64_vector(seg_ranks, "seg_ranks");
  const int64_t num_parts = part_offsets.size(0) - 1;
  TORCH_CHECK(num_parts >= 1, "lora_shrink_expand: part_offsets needs at least 2 entries");
  TORCH_CHECK(a.size(1) == num_parts * max_rank, "lora_shrink_expand: a must have num_parts * ",
              "max_rank = ", num_parts * max_rank, " rows per slot, got ", a.size(1));
  const int64_t* offsets = part_offsets.data_ptr<int64_t>();
  TORCH_CHECK(offsets[0] == 0 && offsets[num_parts] == out_features,
              "lora_shrink_expand: part_offsets must run from 0 to out_features ", out_features);
  for (int64_t q = 0; q < num_parts; ++q) {
    TORCH_CHECK(offsets[q] <= offsets[q + 1], "lora_shrink_expand: part_offsets must not decrease");
  }
  const int64_t num_segments = seg_slots.size(0);
  TORCH_CHECK(seg_ranks.size(0) == num_segments && seg_starts.size(0) == num_segments + 1,
              "lora_shrink_expand: seg_starts must have num_segments + 1 entries and seg_ranks ",
              "num_segments");
  const int64_t* starts = seg_starts.data_ptr<int64_t>();
  const int64_t* slots = seg_slots.data_ptr<int64_t>();
  const int64_t* ranks = seg_ranks.data_ptr<int64_t>();
  const int64_t* row_ptr = rows.data_ptr<int64_t>();
  TORCH_CHECK(num_segments == 0 || (starts[0] >= 0 && starts[num_segments] <= rows.size(0)),
              "lora_shrink_expand: seg_starts out of range of rows");
  for (int64_t g = 0; g < num_segments; ++g) {
    TORCH_CHECK(starts[g] <= starts[g + 1], "lora_shrink_expand: seg_starts must not decrease");
    TORCH_CHECK(slots[g] >= 0 && slots[g] < num_slots, "lora_shrink_expand: slot ", slots[g],
                " out of range [0, ", num_slots, ")");
    TORCH_CHECK(ranks[g] >= 0 && ranks[g] <= max_rank, "lora_shrink_expand: rank ", ranks[g],
                " out of range [0, ", max_rank, "]");
  }
  // Each row at most once: tiles of different segments then write disjoint rows.
  std::vector<char> seen(num_rows, 0);
  for (int64_t g = 0; g < num_segments; ++g) {
    for (int64_t i = starts[g]; i < starts[g + 1]; ++i) {
      const int64_t r = row_ptr[i];
      TORCH_CHECK(r >= 0 && r < num_rows, "lora_shrink_expand: row ", r, " out of range [0, ",
                  num_rows, ")");
      TORCH_CHECK(!seen[r], "lora_shrink_expand: row ", r, " appears more than once");
      seen[r] = 1;
    }
  }

  // Work items: (segment, tile of up to kTileRows rows), with their multiply-add counts.
  std::vector<int64_t> item_seg, item_begin;
  int64_t work = 0;
  for (int64_t g = 0; g < num_segments; ++g) {
    if (ranks[g] == 0) continue;
    for (int64_t i = starts[g]; i < starts[g + 1]; i += kTileRows) {
      item_seg.push_back(g);
      item_begin.push_back(i);
    }
    work += (starts[g + 1] - starts[g]) * ranks[g] * (num_parts * in + out_features);
  }
  const int64_t num_items = static_cast<int64_t>(item_seg.size());
  if (num_items == 0) return;
  const Problem problem{in,     out_features, num_parts, max_rank, a.size(1) * in,
                        out_features * max_rank, offsets, row_ptr, starts, slots, ranks};

  // Serial below kMinParallelWork (parallel_for runs a range under its grain inline).
  const int64_t per_item = std::max<int64_t>(1, work / num_items);
  const int64_t grain = std::max<int64_t>(1, kMinParallelWork / per_item);
  auto run = [&](auto* out_ptr) {
    using T = std::remove_pointer_t<decltype(out_ptr)>;
    const T* x_ptr = x.data_ptr<T>();
    const T* a_ptr = a.data_ptr<T>();
    const T* b_ptr = b.data_ptr<T>();
    at::parallel_for(0, num_items, grain, [&](int64_t first, int64_t last) {
      for (int64_t item = first; item < last; ++item) {
        const int64_t g = item_seg[item], begin = item_begin[item];
        const int64_t end = std::min(begin + kTileRows, starts[g + 1]);
        lora_tile<T>(problem, out_ptr, x_ptr, a_ptr, b_ptr, g, begin, end);
      }
    });
  };
  switch (out.scalar_type()) {
    case at::kFloat: run(out.data_ptr<float>()); break;
    case at::kBFloat16: run(out.data_ptr<at::BFloat16>()); break;
    default: run(out.data_ptr<at::Half>()); break;
  }
}
