// The few-row linear over bf16 weights packed in panels (corral/model/packed_weight.py):
// x [rows, in] @ W^T in broadcast form, each output one FMA chain over the inputs in order.
//
// A panel holds 64 outputs: [out / 64, in, 64], the 64 weights of input k side by side, as four
// 16-output sub-panels in paired order (output 16s + l at 2l, output 16s + 8 + l at 2l + 1, for
// l = 0..7). One 32-byte load of a sub-panel gives its two float vectors by a shift (the low
// halves) and a mask or two shifts (the high halves). A tile of R rows x P sub-panels keeps
// R * 2P accumulators; per input k it converts the P sub-panels once and broadcasts x[r][k] into
// 2P FMAs per row, so the conversion is shared by R rows and no horizontal sums are left.
//
// Batch invariance: every output is one chain, k = 0, 1, ..., in - 1, whatever the tile, the
// row count, the input blocking (chains carried through a float buffer) or the threads (split by
// panels), so a row's bits do not depend on the rows beside it
// (tests/model/test_packed_weight.py). The plain layout's kernel (cpu_linear.cpp) sums in
// another order: packed and plain agree to rounding, not to the bit.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "cpu_common.h"
#include "cpu_ops.h"

#if defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512BF16__)
#include <immintrin.h>
#define CORRAL_PANEL_WEIGHTS 1
#endif

namespace {

constexpr int64_t kPanelOutputs = 64;
constexpr int64_t kSubPanelOutputs = 16;

#if defined(CORRAL_PANEL_WEIGHTS)
using corral_cpu::store_bf16x8;

// Rows a tile takes at most: five rows x one sub-panel is 10 accumulators, the two weight
// vectors and a broadcast (six rows ran 0.73-0.82x of five at 32 rows).
constexpr int kMaxTileRows = 5;
// Inputs per block when several rows share a panel: the block of the panel (256 x 128 bytes)
// and of the rows stays in L1/L2 while every tile and sub-panel reads it.
constexpr int64_t kInputBlock = 256;
// The first tile of a block requests the panel's rows this many inputs ahead (the weights
// stream from memory once; without it 2-5 rows of a 56 MB LM head ran at 0.86-0.9x).
constexpr int64_t kPrefetchInputs = 8;

// An empty asm that claims to change v: GCC keeps the converted weights in registers instead of
// folding their loads into the FMAs.
inline void keep_in_register(__m256& v) { asm volatile("" : "+x"(v)); }

inline __m256 low_halves(__m256i words) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(words, 16));
}
// kMask: one AND with a mask held in a register (tiles of one or two rows have registers to
// spare); else two shifts.
template <bool kMask>
inline __m256 high_halves(__m256i words, __m256i mask) {
  if constexpr (kMask) return _mm256_castsi256_ps(_mm256_and_si256(words, mask));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_srli_epi32(words, 16), 16));
}

// sums[r][16 * (s0 + p) + j] over inputs [k0, k1): R rows of x (float, row stride in) against
// sub-panels s0 .. s0 + P - 1 of one panel. kContinue: the chains go on from sums.
template <int R, int P, bool kMask, bool kContinue, bool kPrefetch>
inline void panel_tile(const float* x, int64_t in, const uint16_t* panel, int s0, float* sums,
                       int64_t k0, int64_t k1) {
  __m256 acc[R][2 * P];
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < 2 * P; ++v) {
      float* at = sums + r * kPanelOutputs + s0 * kSubPanelOutputs + 8 * v;
      acc[r][v] = kContinue ? _mm256_loadu_ps(at) : _mm256_setzero_ps();
    }
  }
  const __m256i mask = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  const uint16_t* w = panel + k0 * kPanelOutputs + s0 * kSubPanelOutputs;
  for (int64_t k = k0; k < k1; ++k, w += kPanelOutputs) {
    if constexpr (kPrefetch) {
      const char* ahead = reinterpret_cast<const char*>(w + kPrefetchInputs * kPanelOutputs);
      _mm_prefetch(ahead, _MM_HINT_T0);
      _mm_prefetch(ahead + 64, _MM_HINT_T0);
    }
    if constexpr (R == 1) {
      __m256 b = _mm256_broadcast_ss(x + k);
      keep_in_register(b);
      for (int p = 0; p < P; ++p) {
        const __m256i words =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + p * kSubPanelOutputs));
        acc[0][2 * p] = _mm256_fmadd_ps(b, low_halves(words), acc[0][2 * p]);
        acc[0][2 * p + 1] = _mm256_fmadd_ps(b, high_halves<kMask>(words, mask), acc[0][2 * p + 1]);
      }
    } else {
      for (int p = 0; p < P; ++p) {
        const __m256i words =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + p * kSubPanelOutputs));
        __m256 low = low_halves(words);
        keep_in_register(low);
        __m256 high = high_halves<kMask>(words, mask);
        keep_in_register(high);
        for (int r = 0; r < R; ++r) {
          const __m256 b = _mm256_broadcast_ss(x + r * in + k);
          acc[r][2 * p] = _mm256_fmadd_ps(b, low, acc[r][2 * p]);
          acc[r][2 * p + 1] = _mm256_fmadd_ps(b, high, acc[r][2 * p + 1]);
        }
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < 2 * P; ++v) {
      _mm256_storeu_ps(sums + r * kPanelOutputs + s0 * kSubPanelOutputs + 8 * v, acc[r][v]);
    }
  }
}

// R rows against a whole panel over inputs [k0, k1), in tiles of at least eight independent
// chains where R allows (FMA latency x two FMA units): one row takes the four sub-panels at
// once, two rows two at a time, four or five rows one at a time (tile_rows_for never asks
// for three).
template <int R, bool kContinue, bool kPrefetch>
inline void rows_times_panel(const float* x, int64_t in, const uint16_t* panel, float* sums,
                             int64_t k0, int64_t k1) {
  if constexpr (R == 1) {
    panel_tile<1, 4, true, kContinue, true>(x, in, panel, 0, sums, k0, k1);
  } else if constexpr (R == 2) {
    panel_tile<2, 2, true, kContinue, kPrefetch>(x, in, panel, 0, sums, k0, k1);
    panel_tile<2, 2, true, kContinue, kPrefetch>(x, in, panel, 2, sums, k0, k1);
  } else {
    for (int s = 0; s < 4; ++s) {
      panel_tile<R, 1, false, kContinue, kPrefetch>(x, in, panel, s, sums, k0, k1);
    }
  }
}

template <int R>
inline void rows_times_panel(const float* x, int64_t in, const uint16_t* panel, float* sums,
                             int64_t k0, int64_t k1, bool prefetch) {
  if (k0 == 0) {
    if (prefetch) return rows_times_panel<R, false, true>(x, in, panel, sums, k0, k1);
    return rows_times_panel<R, false, false>(x, in, panel, sums, k0, k1);
  }
  if (prefetch) return rows_times_panel<R, true, true>(x, in, panel, sums, k0, k1);
  rows_times_panel<R, true, false>(x, in, panel, sums, k0, k1);
}

// The row counts of the tiles covering rows: fives, then a 4 or a 2 for the rest (a 3-row tile
// keeps six chains, short of eight, and ran 0.80-1.13x of the dot-product kernel at 3 rows; a
// lone row, four sub-panels at once, is slower per row than a pair): 3 = 2 + 1, 6 = 4 + 2,
// 8 = 4 + 4, 32 = 6 x 5 + 2.
std::vector<int> tile_rows_for(int64_t rows) {
  std::vector<int> tiles(rows / kMaxTileRows, kMaxTileRows);
  switch (rows % kMaxTileRows) {
    case 1:
      if (tiles.empty()) return {1};
      tiles.back() = 4;
      tiles.push_back(2);
      break;
    case 2: tiles.push_back(2); break;
    case 3:
      if (tiles.empty()) return {2, 1};
      tiles.back() = 4;
      tiles.push_back(4);
      break;
    case 4: tiles.push_back(4); break;
  }
  return tiles;
}

void tile_times_panel(int64_t rows, const float* x, int64_t in, const uint16_t* panel,
                      float* sums, int64_t k0, int64_t k1, bool prefetch) {
  switch (rows) {
    case 1: return rows_times_panel<1>(x, in, panel, sums, k0, k1, prefetch);
    case 2: return rows_times_panel<2>(x, in, panel, sums, k0, k1, prefetch);
    case 4: return rows_times_panel<4>(x, in, panel, sums, k0, k1, prefetch);
    default: return rows_times_panel<kMaxTileRows>(x, in, panel, sums, k0, k1, prefetch);
  }
}
#endif

}  // namespace

bool packed_weights_supported() {
#if defined(CORRAL_PANEL_WEIGHTS)
  return true;
#else
  return false;
#endif
}

torch::Tensor panel_linear(const torch::Tensor& x, const torch::Tensor& panels,
                           const c10::optional<torch::Tensor>& bias) {
#if defined(CORRAL_PANEL_WEIGHTS)
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && panels.scalar_type() == at::kBFloat16,
              "packed weights are bfloat16");
  TORCH_CHECK(panels.dim() == 3 && panels.size(2) == kPanelOutputs && panels.is_contiguous(),
              "packed weight of shape ", panels.sizes(), ": expected contiguous [out / 64, in, 64]");
  const int64_t rows = x.size(0), in = x.size(1);
  TORCH_CHECK(panels.size(1) == in, "packed weight of shape ", panels.sizes(), " for x of ", in,
              " columns");
  const int64_t num_panels = panels.size(0), out_features = num_panels * kPanelOutputs;
  TORCH_CHECK(!bias.has_value() || (bias->numel() == out_features && bias->is_contiguous() &&
                                    bias->scalar_type() == at::kBFloat16),
              "bias must be a contiguous bfloat16 vector of ", out_features);
  auto out = torch::empty({rows, out_features}, x.options());
  if (rows == 0) return out;
  std::vector<float> x_float(rows * in);
  corral_cpu::bf16_to_float(x.data_ptr<at::BFloat16>(), x_float.data(), rows * in);
  const auto* w_ptr = static_cast<const uint16_t*>(panels.data_ptr());
  const at::BFloat16* b_ptr = bias.has_value() ? bias->data_ptr<at::BFloat16>() : nullptr;
  auto* o_ptr = out.data_ptr<at::BFloat16>();
  const std::vector<int> tiles = tile_rows_for(rows);
  const int64_t block = rows > 1 ? kInputBlock : in;
  const int64_t grain = std::max<int64_t>(
      1, corral_cpu::min_parallel_work() / std::max<int64_t>(1, rows * in * kPanelOutputs));
  at::parallel_for(0, num_panels, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> sums(rows * kPanelOutputs);
    for (int64_t p = begin; p < end; ++p) {
      const uint16_t* panel = w_ptr + p * in * kPanelOutputs;
      for (int64_t k0 = 0; k0 < in; k0 += block) {
        const int64_t k1 = std::min(in, k0 + block);
        int64_t first_row = 0;
        for (size_t t = 0; t < tiles.size(); ++t) {
          tile_times_panel(tiles[t], x_float.data() + first_row * in, in, panel,
                           sums.data() + first_row * kPanelOutputs, k0, k1, t == 0);
          first_row += tiles[t];
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t j = 0; j < kPanelOutputs; j += 8) {
          __m256 v = _mm256_loadu_ps(sums.data() + r * kPanelOutputs + j);
          if (b_ptr != nullptr) v = _mm256_add_ps(v, corral_cpu::load_bf16x8(b_ptr + p * kPanelOutputs + j));
          store_bf16x8(o_ptr + r * out_features + p * kPanelOutputs + j, v);
        }
      }
    }
  });
  return out;
#else
  TORCH_CHECK(false, "this build of the kernels does not read packed weights");
  return {};
#endif
}

// Rows row_ids of a packed weight [out / 64, in, 64] (or AMX tiles, cpu_amx_linear.cpp) in the
// plain layout: [n, in] (the lookups of an embedding table that is also the packed LM head).
torch::Tensor packed_rows(torch::Tensor weight, torch::Tensor row_ids) {
  if (weight.dim() == 5) return tiled_rows(weight, row_ids);
  TORCH_CHECK(weight.dim() == 3 && weight.size(2) == kPanelOutputs && weight.is_contiguous() &&
                  weight.element_size() == 2,
              "packed_rows: a contiguous 16-bit packed weight [out / 64, in, 64]");
  TORCH_CHECK(row_ids.dim() == 1 && row_ids.scalar_type() == at::kLong,
              "packed_rows: 1-D int64 ids");
  const int64_t num_panels = weight.size(0), in = weight.size(1), n = row_ids.size(0);
  auto ids = row_ids.contiguous();
  auto out = torch::empty({n, in}, weight.options());
  const int64_t* id_ptr = ids.data_ptr<int64_t>();
  const auto* w_ptr = static_cast<const uint16_t*>(weight.data_ptr());
  auto* o_ptr = static_cast<uint16_t*>(out.data_ptr());
  for (int64_t i = 0; i < n; ++i) {
    const int64_t row = id_ptr[i];
    TORCH_CHECK(row >= 0 && row < num_panels * kPanelOutputs, "packed_rows: row ", row, " of ",
                num_panels * kPanelOutputs);
    // Output j of a panel sits at 16 (j / 16) + 2 (j % 8) + (j % 16) / 8 of each input's 64.
    const int64_t j = row % kPanelOutputs;
    const int64_t slot = kSubPanelOutputs * (j / kSubPanelOutputs) + 2 * (j % 8) + (j % 16) / 8;
    const uint16_t* source = w_ptr + (row / kPanelOutputs) * in * kPanelOutputs + slot;
    uint16_t* dst = o_ptr + i * in;
    for (int64_t k = 0; k < in; ++k) dst[k] = source[k * kPanelOutputs];
  }
  return out;
}
