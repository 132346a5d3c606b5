// The int8 linear over weights packed in panels (corral/model/quantization.py,
// Int8Weight.packed):
// x [rows, in] @ dequant(W)^T with integer multiply-adds. Each row of x is quantized to int16
// on the fly (symmetric, scale max |x_r| / 32767), the products run as vpmaddwd (16 int16
// multiply-adds an instruction, two inputs per output lane) and sum exactly in int32.
//
// A panel holds 64 outputs: [out / 64, in / 2, 128] int8, for each input pair (2t, 2t + 1) the
// 64 outputs' two weights side by side, output 8s + l of the panel at byte 16s + 2l (+ 1 for
// input 2t + 1). Eight bytes pairs of a sub-panel widen (vpmovsxbw) to one vector of int16 that
// vpmaddwd multiplies by the broadcast x pair: eight int32 partial sums, one per output.
//
// The int32 sums are exact; inputs run in blocks of kInputBlock (at most 127 * 32767 * 2 per
// pair, so a block stays below 2^31) whose sums are added to a float sum per output in block
// order. Grouped weights (a scale per output and group of inputs: GPTQ/AWQ checkpoints) take
// blocks of one group each, every block's sums multiplied by its group's scales as they are
// added (one fused multiply-add, written out: left to the compiler, the contraction differed
// between tile shapes, and with it a row's result between batches); scales then come packed as
// [out / 64, groups, 64]. So a row's result depends on its
// own values only, not on the rows beside it or the threads (tests/model/test_int8_panel.py),
// and differs from the dequantizing kernel by the quantization of x (at most max |x_r| / 65534
// an element) and rounding.
//
// Rows holding NaN, infinities or only values below kTinyScale (whose scale would not invert)
// take an exact float loop instead, so NaN and inf propagate as in torch.
//
// With AVX-512 VNNI the same panels are read 32 bytes (16 outputs) at a time: vpmovsxbw widens
// them to 32 int16 and vpdpwssd multiplies, adds pairs and accumulates into 16 int32 sums in
// one instruction. The int32 sums are the same exact sums, so outputs are bit-identical to the
// AVX2 form's.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu_common.h"
#include "cpu_ops.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define CORRAL_INT8_PANELS 1
#if defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define CORRAL_INT8_PANELS_VNNI 1
#endif
#endif

namespace {

constexpr int64_t kPanelOutputs = 64;
constexpr int64_t kPairBytes = 2 * kPanelOutputs;  // one input pair of a panel
constexpr int kSubPanels = 8;                     // of 8 outputs each
constexpr float kInt16Max = 32767.0f;
constexpr float kTinyScale = 1e-30f;
// A group's int32 sums stay below 2^31: 512 * 127 * 32767 < 2^31.
constexpr int64_t kMaxGroupSize = 512;

#if defined(CORRAL_INT8_PANELS)
// Inputs per block (even): the int32 sums of a block stay below 256 * 127 * 32767 < 2^31, and
// the panel's block (16 KiB) stays in L1 while the row tiles read it.
constexpr int64_t kInputBlock = 256;
// Rows a tile takes at most: five rows x two sub-panels is 10 sums, two widened sub-panels and
// a broadcast (13 registers). In a same-process sweep on the 2-core AVX2 EPYC, tiles of at most
// four rows ran 0.7-0.9x of five at 32 rows; six rows were no faster.
#if defined(CORRAL_INT8_PANELS_VNNI)
// Six rows x four 16-output sub-panels: 24 sums and four widened sub-panels (28 of the 32
// registers; the x pair is an embedded broadcast from memory).
constexpr int kMaxTileRows = 6;
#else
constexpr int kMaxTileRows = 5;
#endif

using corral_cpu::load_float8;
using corral_cpu::store_float8;

// Row x [in] as int16 in xq, returns the scale (0 for an exact-path row). in % 16 == 0 is not
// required: the tail is scalar.
template <typename T>
float quantize_row(const T* x, int64_t in, int16_t* xq) {
  __m256 max_abs = _mm256_setzero_ps();
  const __m256 sign = _mm256_set1_ps(-0.0f);
  int64_t k = 0;
  bool finite = true;
  for (; k + 8 <= in; k += 8) {
    const __m256 v = _mm256_andnot_ps(sign, load_float8(x + k));
    // max_ps drops NaN in its first operand: NaN is caught by the finite check below.
    max_abs = _mm256_max_ps(v, max_abs);
    finite &= _mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)) == 0;
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, max_abs);
  float row_max = 0.0f;
  for (float lane : lanes) row_max = std::max(row_max, lane);
  for (; k < in; ++k) {
    const float v = std::fabs(corral_cpu::to_float(x[k]));
    finite &= !std::isnan(v);
    row_max = std::max(row_max, v);
  }
  if (!finite || !std::isfinite(row_max) || row_max < kTinyScale) return 0.0f;
  const float inverse = kInt16Max / row_max;
  const __m256 inv = _mm256_set1_ps(inverse);
  k = 0;
  for (; k + 16 <= in; k += 16) {
    const __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(load_float8(x + k), inv));
    const __m256i b = _mm256_cvtps_epi32(_mm256_mul_ps(load_float8(x + k + 8), inv));
    // packs interleaves 128-bit lanes (a0-3 b0-3 a4-7 b4-7): the permute restores the order.
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xD8);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(xq + k), packed);
  }
  for (; k < in; ++k) {
    const float q = std::nearbyint(corral_cpu::to_float(x[k]) * inverse);
    xq[k] = static_cast<int16_t>(std::clamp(q, -kInt16Max, kInt16Max));
  }
  return row_max / kInt16Max;
}

// An empty asm that claims to change v: the widened weights stay in registers.
inline void keep_in_register(__m256i& v) { asm volatile("" : "+x"(v)); }

// acc += madd(pair, weights) with the product in a scratch register: written as intrinsics, GCC
// computed each sum into a new register and moved it back, and spilled sums of 8-10 register
// tiles to the stack.
inline __m256i madd_accumulate(__m256i acc, __m256i pair, __m256i weights) {
  __m256i product;
  asm("vpmaddwd %[w], %[x], %[p]\n\tvpaddd %[p], %[a], %[a]"
      : [a] "+x"(acc), [p] "=&x"(product)
      : [w] "x"(weights), [x] "x"(pair));
  return acc;
}

// R rows x S sub-panels (from s0) over input pairs [t0, t1): int32 sums, then added to the float
// sums [r][64] (set when kFirst), times block_scales[64] (the block's group scales) when given.
template <int R, int S, bool kFirst>
inline void int8_tile(const int16_t* xq, int64_t in, const int8_t* panel, int s0, float* sums,
                      int64_t t0, int64_t t1, const float* block_scales) {
  __m256i acc[R][S];
  for (int r = 0; r < R; ++r) {
    for (int s = 0; s < S; ++s) acc[r][s] = _mm256_setzero_si256();
  }
  const int8_t* w = panel + t0 * kPairBytes + 16 * s0;
  const int32_t* x_pairs = reinterpret_cast<const int32_t*>(xq);
  const int64_t row_pairs = in / 2;
  for (int64_t t = t0; t < t1; ++t, w += kPairBytes) {
    if constexpr (R == 1) {
      // One broadcast, each sub-panel widened as it is used.
      const __m256i pair = _mm256_set1_epi32(x_pairs[t]);
      for (int s = 0; s < S; ++s) {
        const __m256i weights =
            _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 16 * s)));
        acc[0][s] = madd_accumulate(acc[0][s], pair, weights);
      }
    } else {
      // The S widened sub-panels held in registers, one broadcast at a time: R * S + S + 1
      // registers.
      __m256i weights[S];
      for (int s = 0; s < S; ++s) {
        weights[s] =
            _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 16 * s)));
        keep_in_register(weights[s]);
      }
      for (int r = 0; r < R; ++r) {
        const __m256i pair = _mm256_set1_epi32(x_pairs[r * row_pairs + t]);
        for (int s = 0; s < S; ++s) {
          acc[r][s] = madd_accumulate(acc[r][s], pair, weights[s]);
        }
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int s = 0; s < S; ++s) {
      float* at = sums + r * kPanelOutputs + 8 * (s0 + s);
      const __m256 block = _mm256_cvtepi32_ps(acc[r][s]);
      __m256 total;
      if (block_scales == nullptr) {
        total = kFirst ? block : _mm256_add_ps(_mm256_loadu_ps(at), block);
      } else {
        const __m256 scale = _mm256_loadu_ps(block_scales + 8 * (s0 + s));
        total = kFirst ? _mm256_mul_ps(block, scale)
                       : _mm256_fmadd_ps(block, scale, _mm256_loadu_ps(at));
      }
      _mm256_storeu_ps(at, total);
    }
  }
}

#if defined(CORRAL_INT8_PANELS_VNNI)
// acc += the pair products of weights and the x pair at `pair` broadcast from memory: written as
// intrinsics, GCC kept most sums of a six-row tile on the stack.
inline __m512i dpwssd_broadcast(__m512i acc, __m512i weights, const int32_t* pair) {
  asm("vpdpwssd %[x]%{1to16%}, %[w], %[a]" : [a] "+v"(acc) : [w] "v"(weights), [x] "m"(*pair));
  return acc;
}

// R rows x the whole panel (four sub-panels of 16 outputs, 32 bytes each) over pairs [t0, t1),
// added to the float sums as int8_tile does.
template <int R, bool kFirst>
inline void rows_times_panel(const int16_t* xq, int64_t in, const int8_t* panel, float* sums,
                             int64_t t0, int64_t t1, const float* block_scales) {
  constexpr int S = 4;
  __m512i acc[R][S];
  for (int r = 0; r < R; ++r) {
    for (int s = 0; s < S; ++s) acc[r][s] = _mm512_setzero_si512();
  }
  const int8_t* w = panel + t0 * kPairBytes;
  const int32_t* x_pairs = reinterpret_cast<const int32_t*>(xq);
  const int64_t row_pairs = in / 2;
  for (int64_t t = t0; t < t1; ++t, w += kPairBytes) {
    __m512i weights[S];
    for (int s = 0; s < S; ++s) {
      weights[s] =
          _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 32 * s)));
    }
    for (int r = 0; r < R; ++r) {
      const int32_t* pair = x_pairs + r * row_pairs + t;
      for (int s = 0; s < S; ++s) acc[r][s] = dpwssd_broadcast(acc[r][s], weights[s], pair);
    }
  }
  // Unrolled, so that the sums stay in registers (a loop over them kept them in memory).
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int s = 0; s < S; ++s) {
      float* at = sums + r * kPanelOutputs + 16 * s;
      const __m512 block = _mm512_cvtepi32_ps(acc[r][s]);
      __m512 total;
      if (block_scales == nullptr) {
        total = kFirst ? block : _mm512_add_ps(_mm512_loadu_ps(at), block);
      } else {
        const __m512 scale = _mm512_loadu_ps(block_scales + 16 * s);
        total = kFirst ? _mm512_mul_ps(block, scale)
                       : _mm512_fmadd_ps(block, scale, _mm512_loadu_ps(at));
      }
      _mm512_storeu_ps(at, total);
    }
  }
}
#else
// R rows against a whole panel over pairs [t0, t1): one row takes the eight sub-panels at once,
// two rows four at a time, more rows two at a time.
template <int R, bool kFirst>
inline void rows_times_panel(const int16_t* xq, int64_t in, const int8_t* panel, float* sums,
                             int64_t t0, int64_t t1, const float* block_scales) {
  constexpr int S = R == 1 ? 8 : (R == 2 ? 4 : 2);
  for (int s0 = 0; s0 < kSubPanels; s0 += S) {
    int8_tile<R, S, kFirst>(xq, in, panel, s0, sums, t0, t1, block_scales);
  }
}
#endif

template <bool kFirst>
void tile_times_panel(int rows, const int16_t* xq, int64_t in, const int8_t* panel, float* sums,
                      int64_t t0, int64_t t1, const float* block_scales) {
  switch (rows) {
    case 1: return rows_times_panel<1, kFirst>(xq, in, panel, sums, t0, t1, block_scales);
    case 2: return rows_times_panel<2, kFirst>(xq, in, panel, sums, t0, t1, block_scales);
    case 3: return rows_times_panel<3, kFirst>(xq, in, panel, sums, t0, t1, block_scales);
    case 4: return rows_times_panel<4, kFirst>(xq, in, panel, sums, t0, t1, block_scales);
#if defined(CORRAL_INT8_PANELS_VNNI)
    case 5: return rows_times_panel<5, kFirst>(xq, in, panel, sums, t0, t1, block_scales);
#endif
    default:
      return rows_times_panel<kMaxTileRows, kFirst>(xq, in, panel, sums, t0, t1, block_scales);
  }
}

// Output j of a panel at pair byte 16 (j / 8) + 2 (j % 8) (+ 1 for the odd input).
inline int64_t weight_offset(int64_t j, int64_t k) {
  return (k / 2) * kPairBytes + 16 * (j / 8) + 2 * (j % 8) + (k % 2);
}

template <typename T>
void int8_panel_rows(const T* x_ptr, const int8_t* w_ptr, const float* s_ptr, int64_t groups,
                     const T* b_ptr, T* o_ptr, int64_t rows, int64_t in, int64_t num_panels) {
  // Per channel: blocks of kInputBlock, the channel's scale at the end; grouped: a block a group.
  const int64_t block = groups > 1 ? in / groups : kInputBlock;
  const int64_t out_features = num_panels * kPanelOutputs;
  // Quantized rows go to consecutive slots of xq (an exact-path row's slot is reused by the
  // next row), so the tiles read them without gaps.
  std::vector<int16_t> xq(rows * in);
  std::vector<float> x_scales(rows);
  std::vector<int64_t> quantized_rows, exact_rows;
  for (int64_t r = 0; r < rows; ++r) {
    int16_t* slot = xq.data() + static_cast<int64_t>(quantized_rows.size()) * in;
    x_scales[r] = quantize_row(x_ptr + r * in, in, slot);
    (x_scales[r] > 0.0f ? quantized_rows : exact_rows).push_back(r);
  }
  const int16_t* xq_rows = xq.data();
  const int64_t num_quantized = static_cast<int64_t>(quantized_rows.size());
  std::vector<int> tiles(num_quantized / kMaxTileRows, kMaxTileRows);
  if (num_quantized % kMaxTileRows) tiles.push_back(num_quantized % kMaxTileRows);
  const int64_t grain = std::max<int64_t>(
      1, corral_cpu::min_parallel_work() / std::max<int64_t>(1, rows * in * kPanelOutputs));
  at::parallel_for(0, num_panels, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> sums(std::max<int64_t>(1, num_quantized) * kPanelOutputs);
    for (int64_t p = begin; p < end; ++p) {
      const int8_t* panel = w_ptr + p * (in / 2) * kPairBytes;
      // Per channel: the panel's 64 scales, applied at the end; grouped: [groups, 64].
      const float* scale = s_ptr + p * groups * kPanelOutputs;
      for (int64_t k0 = 0; k0 < in; k0 += block) {
        const int64_t t0 = k0 / 2, t1 = std::min(in, k0 + block) / 2;
        const float* block_scales = groups > 1 ? scale + (k0 / block) * kPanelOutputs : nullptr;
        int64_t first = 0;
        for (int rows_in_tile : tiles) {
          const int16_t* tile_x = xq_rows + first * in;
          float* tile_sums = sums.data() + first * kPanelOutputs;
          if (k0 == 0) {
            tile_times_panel<true>(rows_in_tile, tile_x, in, panel, tile_sums, t0, t1,
                                   block_scales);
          } else {
            tile_times_panel<false>(rows_in_tile, tile_x, in, panel, tile_sums, t0, t1,
                                    block_scales);
          }
          first += rows_in_tile;
        }
      }
      for (int64_t i = 0; i < num_quantized; ++i) {
        const int64_t r = quantized_rows[i];
        const __m256 x_scale = _mm256_set1_ps(x_scales[r]);
        for (int64_t j = 0; j < kPanelOutputs; j += 8) {
          __m256 v = _mm256_mul_ps(_mm256_loadu_ps(sums.data() + i * kPanelOutputs + j), x_scale);
          if (groups == 1) v = _mm256_mul_ps(v, _mm256_loadu_ps(scale + j));
          if (b_ptr != nullptr) {
            v = _mm256_add_ps(v, load_float8(b_ptr + p * kPanelOutputs + j));
          }
          store_float8(o_ptr + r * out_features + p * kPanelOutputs + j, v);
        }
      }
      for (int64_t r : exact_rows) {
        for (int64_t j = 0; j < kPanelOutputs; ++j) {
          float v = 0.0f;
          for (int64_t g = 0; g < groups; ++g) {
            float total = 0.0f;
            for (int64_t k = g * (in / groups); k < (g + 1) * (in / groups); ++k) {
              total += corral_cpu::to_float(x_ptr[r * in + k]) *
                       static_cast<float>(panel[weight_offset(j, k)]);
            }
            v += total * scale[g * kPanelOutputs + j];
          }
          if (b_ptr != nullptr) v += corral_cpu::to_float(b_ptr[p * kPanelOutputs + j]);
          o_ptr[r * out_features + p * kPanelOutputs + j] = static_cast<T>(v);
        }
      }
    }
  });
}
#endif

}  // namespace

bool int8_panels_supported() {
#if defined(CORRAL_INT8_PANELS)
  return true;
#else
  return false;
#endif
}

torch::Tensor int8_panel_linear(const torch::Tensor& x, const torch::Tensor& panels,
                                const torch::Tensor& scales,
                                const c10::optional<torch::Tensor>& bias) {
#if defined(CORRAL_INT8_PANELS)
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "x must be a contiguous 2-D tensor");
  TORCH_CHECK(panels.scalar_type() == at::kChar && panels.dim() == 3 &&
                  panels.size(2) == kPairBytes && panels.is_contiguous(),
              "packed int8 weight of shape ", panels.sizes(),
              ": expected contiguous int8 [out / 64, in / 2, 128]");
  const int64_t rows = x.size(0), in = x.size(1);
  TORCH_CHECK(panels.size(1) * 2 == in, "packed int8 weight of shape ", panels.sizes(),
              " for x of ", in, " columns");
  const int64_t num_panels = panels.size(0), out_features = num_panels * kPanelOutputs;
  const int64_t groups = scales.dim() == 3 ? scales.size(1) : 1;
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous() &&
                  ((scales.dim() == 1 && scales.numel() == out_features) ||
                   (scales.dim() == 3 && scales.size(0) == num_panels &&
                    scales.size(2) == kPanelOutputs)),
              "packed int8 weights take float32 scales [", out_features,
              "] (per channel) or [out / 64, groups, 64]");
  TORCH_CHECK(groups == 1 || (in % groups == 0 && (in / groups) % 2 == 0 &&
                              in / groups <= kMaxGroupSize),
              "packed int8 groups must be an even size of at most ", kMaxGroupSize, " inputs");
  TORCH_CHECK(!bias.has_value() || (bias->numel() == out_features && bias->is_contiguous() &&
                                    bias->scalar_type() == x.scalar_type()),
              "bias must be a contiguous vector of ", out_features, " in x's dtype");
  auto out = torch::empty({rows, out_features}, x.options());
  if (rows == 0) return out;
  const auto* w_ptr = panels.data_ptr<int8_t>();
  const float* s_ptr = scales.data_ptr<float>();
  const auto run = [&](auto tag) {
    using T = decltype(tag);
    int8_panel_rows<T>(x.data_ptr<T>(), w_ptr, s_ptr, groups,
                       bias.has_value() ? bias->data_ptr<T>() : nullptr, out.data_ptr<T>(), rows,
                       in, num_panels);
  };
  switch (x.scalar_type()) {
    case at::kFloat: run(float{}); break;
    case at::kBFloat16: run(at::BFloat16{}); break;
    case at::kHalf: run(at::Half{}); break;
    default: TORCH_CHECK(false, "int8 panels: x must be float32, bfloat16 or float16");
  }
  return out;
#else
  TORCH_CHECK(false, "this build of the kernels does not read packed int8 weights");
  return {};
#endif
}
