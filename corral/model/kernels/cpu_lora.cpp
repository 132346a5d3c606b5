// The LoRA delta of one linear for a batch mixing adapters (the Punica / S-LoRA grouping): per
// segment of rows sharing an adapter slot, a shrink h = A_slot x (rank values per fused part)
// and an expand out += B_slot h, both accumulated in float32, in one call for all segments.
// Layouts and semantics: corral/lora/apply.py (add_lora_reference is the PyTorch reference).
//
// Work is split into tiles of up to kTileRows rows of one segment (each row is in at most one
// segment, so tiles write disjoint rows and may run in parallel). Per tile: x rows converted to
// float once; the shrink takes M A rows by N x rows per step (about eight FMA chains at any
// tile size); the expand transposes 8 output columns of B into a float panel [rank][8] and adds
// outer products h[j] * panel[j], so no horizontal sums are needed; the delta is rounded to the
// dtype and added as the reference does. AVX2/FMA (AVX-512F in the shrink where compiled for
// it), with plain loops otherwise. Only the first `rank` values of an adapter are ever read.
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

using corral_cpu::min_parallel_work;
using corral_cpu::to_float;

namespace {

// Rows of one segment processed together: each A and B row is read once per tile.
constexpr int64_t kTileRows = 8;
// Output columns of an expand panel (one AVX2 vector).
constexpr int64_t kPanel = 8;

inline int64_t round_up8(int64_t n) { return (n + 7) / 8 * 8; }

// out = round(float(out) + round(delta)) in T, as the reference's delta.to(dtype) and
// index_add_ do it.
template <typename T>
inline void add_delta(T* out, float delta) {
  *out = static_cast<T>(to_float(*out) + to_float(static_cast<T>(delta)));
}

#if defined(CORRAL_LORA_AVX2)
using corral_cpu::load_float8;

inline float sum_lanes(__m256 v) {
  const __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 pair = _mm_add_ps(half, _mm_movehl_ps(half, half));
  return _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)));
}

// bfloat16 bits (in the high halves) of v rounded to nearest even, as c10::BFloat16 rounds;
// NaN becomes c10's quiet NaN.
inline __m256i round_bf16_bits(__m256 v) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  const __m256i rounded = _mm256_add_epi32(bits, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7FFF)));
  const __m256i truncated = _mm256_and_si256(rounded, _mm256_set1_epi32(0xFFFF0000u));
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  return _mm256_blendv_epi8(truncated, _mm256_set1_epi32(0x7FC00000), nan);
}

// The vector form of add_delta for eight consecutive elements.
inline void add_delta_eight(float* out, __m256 delta) {
  _mm256_storeu_ps(out, _mm256_add_ps(_mm256_loadu_ps(out), delta));
}
inline void add_delta_eight(at::BFloat16* out, __m256 delta) {
  const __m256 rounded = _mm256_castsi256_ps(round_bf16_bits(delta));
  const __m256i sum = round_bf16_bits(_mm256_add_ps(load_float8(out), rounded));
  const __m256i packed = _mm256_packus_epi32(_mm256_srli_epi32(sum, 16), _mm256_setzero_si256());
  const __m256i ordered = _mm256_permute4x64_epi64(packed, 0b11111000);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm256_castsi256_si128(ordered));
}
inline void add_delta_eight(at::Half* out, __m256 delta) {
  constexpr int kNearest = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  const __m256 rounded = _mm256_cvtph_ps(_mm256_cvtps_ph(delta, kNearest));
  const __m256 sum = _mm256_add_ps(load_float8(out), rounded);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm256_cvtps_ph(sum, kNearest));
}

// r[k] (row k of an 8x8 block) becomes column k.
inline void transpose_eight(__m256* r) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
  r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
  r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}
#endif

#if defined(__AVX512F__)
using corral_cpu::load_float16;
#endif

// dst[i] = float(src[i]) for i < n.
template <typename T>
inline void convert_to_float(const T* src, float* dst, int64_t n) {
  int64_t i = 0;
#if defined(CORRAL_LORA_AVX2)
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load_float8(src + i));
#endif
  for (; i < n; ++i) dst[i] = to_float(src[i]);
}

// Shrink of M consecutive A rows (a, stride in) against N x rows (float):
// h[t * h_stride + m] = a[m] . xs[t]. Each chunk of an A row is loaded once for the N rows, and
// the M * N sums are independent FMA chains.
template <int N, int M, typename T>
inline void shrink_block(const T* a, int64_t in, const float* const* xs, float* h,
                         int64_t h_stride) {
  float sums[M][N] = {};
  int64_t i = 0;
#if defined(__AVX512F__)
  {
    __m512 acc[M][N];
    for (int m = 0; m < M; ++m)
      for (int t = 0; t < N; ++t) acc[m][t] = _mm512_setzero_ps();
    for (; i + 16 <= in; i += 16) {
      for (int m = 0; m < M; ++m) {
        const __m512 av = load_float16(a + m * in + i);
        for (int t = 0; t < N; ++t) {
          acc[m][t] = _mm512_fmadd_ps(av, _mm512_loadu_ps(xs[t] + i), acc[m][t]);
        }
      }
    }
    for (int m = 0; m < M; ++m)
      for (int t = 0; t < N; ++t) sums[m][t] = _mm512_reduce_add_ps(acc[m][t]);
  }
#endif
#if defined(CORRAL_LORA_AVX2)
  {
    __m256 acc[M][N];
    for (int m = 0; m < M; ++m)
      for (int t = 0; t < N; ++t) acc[m][t] = _mm256_setzero_ps();
    for (; i + 8 <= in; i += 8) {
      for (int m = 0; m < M; ++m) {
        const __m256 av = load_float8(a + m * in + i);
        for (int t = 0; t < N; ++t) {
          acc[m][t] = _mm256_fmadd_ps(av, _mm256_loadu_ps(xs[t] + i), acc[m][t]);
        }
      }
    }
    for (int m = 0; m < M; ++m)
      for (int t = 0; t < N; ++t) sums[m][t] += sum_lanes(acc[m][t]);
  }
#endif
  for (; i < in; ++i) {
    for (int m = 0; m < M; ++m) {
      const float av = to_float(a[m * in + i]);
      for (int t = 0; t < N; ++t) sums[m][t] += av * xs[t][i];
    }
  }
  for (int m = 0; m < M; ++m)
    for (int t = 0; t < N; ++t) h[t * h_stride + m] = sums[m][t];
}

// One part's shrink, A rows [0, rank) of a_part, for N x rows: about eight chains at any N.
template <int N, typename T>
void shrink_part(const T* a_part, int64_t rank, int64_t in, const float* const* xs, float* h,
                 int64_t h_stride) {
  constexpr int M = N == 1 ? 8 : N == 2 ? 4 : N <= 4 ? 2 : 1;
  int64_t j = 0;
  for (; j + M <= rank; j += M) shrink_block<N, M>(a_part + j * in, in, xs, h + j, h_stride);
  for (; j < rank; ++j) shrink_block<N, 1>(a_part + j * in, in, xs, h + j, h_stride);
}

template <typename T>
void shrink_part_rows(int64_t n, const T* a_part, int64_t rank, int64_t in, const float* const* xs,
                      float* h, int64_t h_stride) {
  switch (n) {
    case 1: shrink_part<1>(a_part, rank, in, xs, h, h_stride); break;
    case 2: shrink_part<2>(a_part, rank, in, xs, h, h_stride); break;
    case 3: shrink_part<3>(a_part, rank, in, xs, h, h_stride); break;
    case 4: shrink_part<4>(a_part, rank, in, xs, h, h_stride); break;
    case 5: shrink_part<5>(a_part, rank, in, xs, h, h_stride); break;
    case 6: shrink_part<6>(a_part, rank, in, xs, h, h_stride); break;
    case 7: shrink_part<7>(a_part, rank, in, xs, h, h_stride); break;
    default: shrink_part<8>(a_part, rank, in, xs, h, h_stride); break;
  }
}

// Expand of one part's columns for one row, without vectors: out[o] += b[o, :rank] . h.
template <typename T>
void expand_columns_scalar(const T* b, int64_t max_rank, int64_t rank, const float* h, T* out,
                           int64_t columns) {
  for (int64_t o = 0; o < columns; ++o) {
    float sum = 0.f;
    for (int64_t j = 0; j < rank; ++j) sum += to_float(b[o * max_rank + j]) * h[j];
    add_delta(out + o, sum);
  }
}

#if defined(CORRAL_LORA_AVX2)
// bt[j * 8 + k] = b[k, j] as float for an 8-column panel, j < rank_pad (zero from rank on: B's
// padding is never read).
template <typename T>
void transpose_panel(const T* b, int64_t max_rank, int64_t rank, int64_t rank_pad, float* bt) {
  for (int64_t j0 = 0; j0 < rank_pad; j0 += 8) {
    __m256 r[8];
    if (j0 + 8 <= rank) {
      for (int k = 0; k < 8; ++k) r[k] = load_float8(b + k * max_rank + j0);
    } else {
      alignas(32) float tail[8];
      for (int k = 0; k < 8; ++k) {
        for (int64_t j = 0; j < 8; ++j) {
          tail[j] = j0 + j < rank ? to_float(b[k * max_rank + j0 + j]) : 0.f;
        }
        r[k] = _mm256_load_ps(tail);
      }
    }
    transpose_eight(r);
    for (int j = 0; j < 8; ++j) _mm256_storeu_ps(bt + (j0 + j) * 8, r[j]);
  }
}

// out_rows[t][0, 8) += sum_j h[t * h_stride + j] * bt[j] (outer products, rank_pad a multiple
// of 8); K chains per row keep about eight FMA chains in flight for any N.
template <int N, typename T>
void expand_panel(const float* bt, int64_t rank_pad, const float* h, int64_t h_stride,
                  T* const* out_rows, int64_t column) {
  constexpr int K = N <= 2 ? 4 : N <= 4 ? 2 : 1;
  __m256 acc[N][K];
  for (int t = 0; t < N; ++t)
    for (int k = 0; k < K; ++k) acc[t][k] = _mm256_setzero_ps();
  for (int64_t j = 0; j < rank_pad; j += K) {
    for (int k = 0; k < K; ++k) {
      const __m256 bj = _mm256_loadu_ps(bt + (j + k) * 8);
      for (int t = 0; t < N; ++t) {
        acc[t][k] = _mm256_fmadd_ps(_mm256_broadcast_ss(h + t * h_stride + j + k), bj, acc[t][k]);
      }
    }
  }
  for (int t = 0; t < N; ++t) {
    __m256 delta = acc[t][0];
    for (int k = 1; k < K; ++k) delta = _mm256_add_ps(delta, acc[t][k]);
    add_delta_eight(out_rows[t] + column, delta);
  }
}

template <typename T>
void expand_panel_rows(int64_t n, const float* bt, int64_t rank_pad, const float* h,
                       int64_t h_stride, T* const* out_rows, int64_t column) {
  switch (n) {
    case 1: expand_panel<1>(bt, rank_pad, h, h_stride, out_rows, column); break;
    case 2: expand_panel<2>(bt, rank_pad, h, h_stride, out_rows, column); break;
    case 3: expand_panel<3>(bt, rank_pad, h, h_stride, out_rows, column); break;
    case 4: expand_panel<4>(bt, rank_pad, h, h_stride, out_rows, column); break;
    case 5: expand_panel<5>(bt, rank_pad, h, h_stride, out_rows, column); break;
    case 6: expand_panel<6>(bt, rank_pad, h, h_stride, out_rows, column); break;
    case 7: expand_panel<7>(bt, rank_pad, h, h_stride, out_rows, column); break;
    default: expand_panel<8>(bt, rank_pad, h, h_stride, out_rows, column); break;
  }
}
#endif

struct Problem {
  int64_t in, out_features, num_parts, max_rank, a_slot_stride, b_slot_stride;
  const int64_t* part_offsets;  // [num_parts + 1]
  const int64_t* rows;
  const int64_t* seg_starts;
  const int64_t* seg_slots;
  const int64_t* seg_ranks;
};

// Per-thread buffers, grown as needed.
struct Scratch {
  std::vector<float> x, h, bt;
};

// One tile: rows[begin:end] of segment seg (at most kTileRows rows).
template <typename T>
void lora_tile(const Problem& p, T* out, const T* x, const T* a, const T* b, int64_t seg,
               int64_t begin, int64_t end, Scratch& scratch) {
  const int64_t n = end - begin, rank = p.seg_ranks[seg];
  if (n <= 0 || rank == 0) return;
  const int64_t in = p.in, rank_pad = round_up8(rank), h_stride = p.num_parts * rank_pad;
  const T* a_slot = a + p.seg_slots[seg] * p.a_slot_stride;
  const T* b_slot = b + p.seg_slots[seg] * p.b_slot_stride;
  T* out_rows[kTileRows];
  for (int64_t t = 0; t < n; ++t) out_rows[t] = out + p.rows[begin + t] * p.out_features;

  // The tile's x rows as float (converted once; float32 x is read in place).
  const float* xs[kTileRows];
  if constexpr (std::is_same_v<T, float>) {
    for (int64_t t = 0; t < n; ++t) xs[t] = x + p.rows[begin + t] * in;
  } else {
    if (static_cast<int64_t>(scratch.x.size()) < n * in) scratch.x.resize(n * in);
    for (int64_t t = 0; t < n; ++t) {
      convert_to_float(x + p.rows[begin + t] * in, scratch.x.data() + t * in, in);
      xs[t] = scratch.x.data() + t * in;
    }
  }

  // Shrink: h[t * h_stride + part * rank_pad + j] = A[part * max_rank + j] . x[t] for j < rank,
  // zero for rank <= j < rank_pad.
  scratch.h.assign(n * h_stride, 0.f);
  float* h = scratch.h.data();
  for (int64_t part = 0; part < p.num_parts; ++part) {
    shrink_part_rows(n, a_slot + part * p.max_rank * in, rank, in, xs, h + part * rank_pad,
                     h_stride);
  }

  // Expand, part by part: delta[t][o] = B[o, :rank] . h[t][part * rank_pad, + rank).
  if (static_cast<int64_t>(scratch.bt.size()) < kPanel * rank_pad) {
    scratch.bt.resize(kPanel * rank_pad);
  }
  for (int64_t part = 0; part < p.num_parts; ++part) {
    const int64_t low = p.part_offsets[part], high = p.part_offsets[part + 1];
    const float* h_part = h + part * rank_pad;
    int64_t o = low;
#if defined(CORRAL_LORA_AVX2)
    for (; o + kPanel <= high; o += kPanel) {
      transpose_panel(b_slot + o * p.max_rank, p.max_rank, rank, rank_pad, scratch.bt.data());
      expand_panel_rows(n, scratch.bt.data(), rank_pad, h_part, h_stride, out_rows, o);
    }
#endif
    for (int64_t t = 0; t < n && o < high; ++t) {
      expand_columns_scalar(b_slot + o * p.max_rank, p.max_rank, rank, h_part + t * h_stride,
                            out_rows[t] + o, high - o);
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

  // Serial below min_parallel_work() (parallel_for runs a range under its grain inline).
  const int64_t per_item = std::max<int64_t>(1, work / num_items);
  const int64_t grain = std::max<int64_t>(1, min_parallel_work() / per_item);
  auto run = [&](auto* out_ptr) {
    using T = std::remove_pointer_t<decltype(out_ptr)>;
    const T* x_ptr = x.data_ptr<T>();
    const T* a_ptr = a.data_ptr<T>();
    const T* b_ptr = b.data_ptr<T>();
    at::parallel_for(0, num_items, grain, [&](int64_t first, int64_t last) {
      Scratch scratch;
      for (int64_t item = first; item < last; ++item) {
        const int64_t g = item_seg[item], begin = item_begin[item];
        const int64_t end = std::min(begin + kTileRows, starts[g + 1]);
        lora_tile<T>(problem, out_ptr, x_ptr, a_ptr, b_ptr, g, begin, end, scratch);
      }
    });
  };
  switch (out.scalar_type()) {
    case at::kFloat: run(out.data_ptr<float>()); break;
    case at::kBFloat16: run(out.data_ptr<at::BFloat16>()); break;
    default: run(out.data_ptr<at::Half>()); break;
  }
}
