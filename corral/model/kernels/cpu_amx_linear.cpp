// The bf16 linear on AMX tiles (Intel Advanced Matrix Extensions: Sapphire Rapids and later
// Xeons): x [rows, in] @ W^T with W packed as tiles (corral/model/packed_weight.py).
//
// Layout [out / 16, in / 32, 16, 16, 2] bf16: for each block of 16 outputs and 32 inputs, one
// 1 KiB tile whose row t holds the 16 outputs' weights of inputs 2t and 2t + 1 side by side
// (output n of the block at elements 2n and 2n + 1): the pair-interleaved form `tdpbf16ps`
// reads as its B operand, so the weights are loaded as they lie. x is read in place as the A
// operand (a tile of up to 16 rows x 32 inputs, the row stride of x). Each `tdpbf16ps`
// multiplies up to 16 rows by 32 inputs by 16 outputs into a float32 C tile.
//
// A call takes outputs 32 at a time (two B tiles, shared by each pair of 16-row A tiles) and
// rows 32 at a time (two A tiles): four C tiles of up to 16 x 16 sums, over all inputs in
// order, then stored, the bias added in float32 and rounded to bf16 once. Each output of a row
// is its own sum over that row's inputs in the same order whatever the other rows are, so a
// row's result does not depend on its batch (tests/model/test_amx_linear.py), and one kernel
// serves every row count.
//
// Linux hands the tile registers to a process only after it asks (arch_prctl
// ARCH_REQ_XCOMP_PERM for XTILEDATA): amx_tiles_supported() asks once and answers false where
// the build, the CPU or the kernel says no.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "cpu_common.h"
#include "cpu_ops.h"

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__) && \
    defined(__linux__)
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#define CORRAL_AMX_TILES 1
#endif

namespace {

constexpr int64_t kTileOutputs = 16;
constexpr int64_t kTileInputs = 32;
constexpr int64_t kTileElements = kTileOutputs * kTileInputs;
constexpr int kTileRows = 16;
// B tiles are prefetched this many input tiles ahead: a model's weights stream from memory at
// every step, and with the prefetch a SmolLM-135M-shaped model's linears (30 layers and the
// head) ran 1.08-1.13x faster at 32 rows on the 2-core AMX Xeon (alternating runs against the
// build without it; 1.02-1.14x at 1-64 rows in one pair of runs; 8 ahead: 1.0-1.12x).
constexpr int64_t kPrefetchTiles = 4;
// Rows are taken in blocks of about this many bytes of x, each block against all of a thread's
// output pairs before the next: the block stays in L2 while the pairs' tiles stream past it.
// Taking every row against one pair at a time re-read all of x (2.4 MB for a 2,048-row prefill
// of a 576-wide model) from L3 for every pair.
constexpr int64_t kRowBlockBytes = 512 * 1024;

#if defined(CORRAL_AMX_TILES)
constexpr long kArchRequestPermission = 0x1023;  // ARCH_REQ_XCOMP_PERM
constexpr long kTileDataFeature = 18;             // XFEATURE_XTILEDATA

bool tiles_permitted() {
  static const bool permitted =
      syscall(SYS_arch_prctl, kArchRequestPermission, kTileDataFeature) == 0;
  return permitted;
}

// The tile palette: C tiles 0-3 (rows x 16 float32: rows 0-15 x outputs 0-15, x outputs
// 16-31, rows 16-31 x outputs 0-15, x outputs 16-31), A tiles 4-5 (rows 0-15 and 16-31 of the
// block x 32 bf16), B tiles 6-7 (16 pairs x 16 outputs x 2 bf16).
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};

void configure_tiles(int rows_low, int rows_high) {
  TileConfig config;
  const int c_rows[4] = {rows_low, rows_low, rows_high, rows_high};
  for (int t = 0; t < 4; ++t) {
    config.rows[t] = static_cast<uint8_t>(c_rows[t]);
    config.bytes_per_row[t] = c_rows[t] > 0 ? 64 : 0;
  }
  config.rows[4] = static_cast<uint8_t>(rows_low);
  config.bytes_per_row[4] = 64;
  config.rows[5] = static_cast<uint8_t>(rows_high);
  config.bytes_per_row[5] = rows_high > 0 ? 64 : 0;
  for (int t = 6; t < 8; ++t) {
    config.rows[t] = kTileRows;
    config.bytes_per_row[t] = 64;
  }
  _tile_loadconfig(&config);
}

// Rows [m0, m0 + rows_low + rows_high) against the output block whose tiles start at w0 and,
// when kTwo, the one at w1, into c [2 row halves][2 output blocks][16][16].
template <bool kHigh, bool kTwo>
inline void tile_block(const uint8_t* x, int64_t x_stride, const uint8_t* w0, const uint8_t* w1,
                       int64_t k_tiles, float (*c)[2][kTileRows][kTileOutputs]) {
  _tile_zero(0);
  if constexpr (kTwo) _tile_zero(1);
  if constexpr (kHigh) _tile_zero(2);
  if constexpr (kHigh && kTwo) _tile_zero(3);
  for (int64_t kb = 0; kb < k_tiles; ++kb) {
    if (kb + kPrefetchTiles < k_tiles) {
      const uint8_t* ahead = w0 + (kb + kPrefetchTiles) * kTileElements * 2;
      for (int line = 0; line < 16; ++line) {
        _mm_prefetch(reinterpret_cast<const char*>(ahead + 64 * line), _MM_HINT_T0);
        if constexpr (kTwo) {
          const uint8_t* next = w1 + (kb + kPrefetchTiles) * kTileElements * 2 + 64 * line;
          _mm_prefetch(reinterpret_cast<const char*>(next), _MM_HINT_T0);
        }
      }
    }
    _tile_loadd(4, x + kb * kTileInputs * 2, x_stride);
    _tile_loadd(6, w0 + kb * kTileElements * 2, 64);
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (kTwo) {
      _tile_loadd(7, w1 + kb * kTileElements * 2, 64);
      _tile_dpbf16ps(1, 4, 7);
    }
    if constexpr (kHigh) {
      _tile_loadd(5, x + kTileRows * x_stride + kb * kTileInputs * 2, x_stride);
      _tile_dpbf16ps(2, 5, 6);
      if constexpr (kTwo) _tile_dpbf16ps(3, 5, 7);
    }
  }
  _tile_stored(0, c[0][0], 64);
  if constexpr (kTwo) _tile_stored(1, c[0][1], 64);
  if constexpr (kHigh) _tile_stored(2, c[1][0], 64);
  if constexpr (kHigh && kTwo) _tile_stored(3, c[1][1], 64);
}
#endif

}  // namespace

// The checks of a tiled bf16 linear's arguments (both kernels, cpu_dot_tiles.cpp too); returns
// its number of outputs (half the weight's for the fused gate/up, `silu`).
int64_t check_tiled_linear(const torch::Tensor& x, const torch::Tensor& tiles,
                           const c10::optional<torch::Tensor>& bias, bool silu) {
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && tiles.scalar_type() == at::kBFloat16,
              "tiled weights and their x are bfloat16");
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "x must be a contiguous 2-D tensor");
  TORCH_CHECK(tiles.dim() == 5 && tiles.size(2) == kTileRows && tiles.size(3) == kTileOutputs &&
                  tiles.size(4) == 2 && tiles.is_contiguous(),
              "tiled weight of shape ", tiles.sizes(),
              ": expected contiguous [out / 16, in / 32, 16, 16, 2]");
  const int64_t in = x.size(1), num_blocks = tiles.size(0);
  TORCH_CHECK(tiles.size(1) * kTileInputs == in, "tiled weight of shape ", tiles.sizes(),
              " for x of ", in, " columns");
  TORCH_CHECK(!silu || num_blocks % 2 == 0, "a gate/up weight of ", num_blocks * kTileOutputs,
              " outputs: the two halves must be whole blocks of ", kTileOutputs);
  const int64_t weight_outputs = num_blocks * kTileOutputs;
  TORCH_CHECK(!bias.has_value() || (bias->numel() == weight_outputs && bias->is_contiguous() &&
                                    bias->scalar_type() == at::kBFloat16),
              "bias must be a contiguous bfloat16 vector of ", weight_outputs);
  return silu ? weight_outputs / 2 : weight_outputs;
}

namespace {
// Cleared by allow_amx_tiles(false): tiled weights then take the dot-product kernel
// (cpu_dot_tiles.cpp), as on a CPU without AMX (tests compare the two in one process).
bool amx_allowed = true;
}  // namespace

void allow_amx_tiles(bool allowed) { amx_allowed = allowed; }

bool amx_tiles_supported() {
#if defined(CORRAL_AMX_TILES)
  return amx_allowed && tiles_permitted();
#else
  return false;
#endif
}

#if defined(CORRAL_AMX_TILES)
namespace {

using corral_cpu::bias16;

// Both amx_linear and amx_linear_silu. Plain: output blocks in pairs (2p, 2p + 1), each block's
// sums + bias rounded to bf16. kSilu: the weight's first half of blocks is the gate's, the
// second the up's; pair p is (p, p + half), and a row's 16 outputs of the pair are
// silu(gate) * up with gate and up first rounded to bf16 as a plain call would store them, then
// silu_and_mul's own lanes (cpu_common.h silu16, rounding as c10): the same bits as the two
// calls, without writing and re-reading the [rows, 2 * intermediate] product.
template <bool kSilu>
torch::Tensor run_tiles(const torch::Tensor& x, const torch::Tensor& tiles,
                        const c10::optional<torch::Tensor>& bias) {
  TORCH_CHECK(amx_tiles_supported(), "AMX tiles are not available to this process");
  const int64_t out_features = check_tiled_linear(x, tiles, bias, kSilu);
  const int64_t rows = x.size(0), in = x.size(1);
  const int64_t num_blocks = tiles.size(0), k_tiles = tiles.size(1);
  auto out = torch::empty({rows, out_features}, x.options());
  if (rows == 0) return out;
  const auto* x_ptr = static_cast<const uint8_t*>(x.data_ptr());
  const auto* w_ptr = static_cast<const uint8_t*>(tiles.data_ptr());
  const at::BFloat16* b_ptr = bias.has_value() ? bias->data_ptr<at::BFloat16>() : nullptr;
  auto* o_ptr = out.data_ptr<at::BFloat16>();
  const int64_t x_stride = in * 2, block_bytes = k_tiles * kTileElements * 2;
  const int64_t half = num_blocks / 2;
  const int64_t num_pairs = kSilu ? half : (num_blocks + 1) / 2;
  const int64_t grain = std::max<int64_t>(
      1, corral_cpu::min_parallel_work() / std::max<int64_t>(1, rows * in * 2 * kTileOutputs));
  // A multiple of 32 rows, at least 32.
  const int64_t block_rows =
      std::max<int64_t>(1, kRowBlockBytes / x_stride / (2 * kTileRows)) * 2 * kTileRows;
  at::parallel_for(0, num_pairs, grain, [&](int64_t begin, int64_t end) {
    alignas(64) float c[2][2][kTileRows][kTileOutputs];
    int configured_low = -1, configured_high = -1;
    for (int64_t block_start = 0; block_start < rows; block_start += block_rows) {
      const int64_t block_end = std::min(rows, block_start + block_rows);
      for (int64_t pair = begin; pair < end; ++pair) {
        // Output blocks n0 and n1 (plain: n1 = n0 + 1 when there is one).
        const int64_t n0 = kSilu ? pair : 2 * pair, n1 = kSilu ? pair + half : n0 + 1;
        const bool two = kSilu || n1 < num_blocks;
        const uint8_t* w0 = w_ptr + n0 * block_bytes;
        const uint8_t* w1 = w_ptr + n1 * block_bytes;
        for (int64_t m0 = block_start; m0 < block_end; m0 += 2 * kTileRows) {
          const int rows_low = static_cast<int>(std::min<int64_t>(kTileRows, rows - m0));
          const int rows_high = static_cast<int>(
              std::clamp<int64_t>(rows - m0 - kTileRows, 0, kTileRows));
          if (rows_low != configured_low || rows_high != configured_high) {
            configure_tiles(rows_low, rows_high);
            configured_low = rows_low;
            configured_high = rows_high;
          }
          const uint8_t* x_block = x_ptr + m0 * x_stride;
          if (rows_high > 0) {
            two ? tile_block<true, true>(x_block, x_stride, w0, w1, k_tiles, c)
                : tile_block<true, false>(x_block, x_stride, w0, w1, k_tiles, c);
          } else {
            two ? tile_block<false, true>(x_block, x_stride, w0, w1, k_tiles, c)
                : tile_block<false, false>(x_block, x_stride, w0, w1, k_tiles, c);
          }
          const __m512 b0 = bias16(b_ptr, n0 * kTileOutputs);
          const __m512 b1 = two ? bias16(b_ptr, n1 * kTileOutputs) : _mm512_setzero_ps();
          for (int h = 0; h < 2; ++h) {
            const int half_rows = h == 0 ? rows_low : rows_high;
            for (int r = 0; r < half_rows; ++r) {
              at::BFloat16* o_row = o_ptr + (m0 + h * kTileRows + r) * out_features;
              const __m512 sums0 = _mm512_load_ps(c[h][0][r]);
              if constexpr (kSilu) {
                corral_cpu::store_silu_tiled16(o_row + n0 * kTileOutputs, sums0, b0,
                                               _mm512_load_ps(c[h][1][r]), b1);
              } else {
                corral_cpu::store_tiled16(o_row + n0 * kTileOutputs, sums0, b0);
                if (two) {
                  corral_cpu::store_tiled16(o_row + n1 * kTileOutputs,
                                            _mm512_load_ps(c[h][1][r]), b1);
                }
              }
            }
          }
        }
      }
    }
    _tile_release();
  });
  return out;
}

}  // namespace
#endif

torch::Tensor amx_linear(const torch::Tensor& x, const torch::Tensor& tiles,
                         const c10::optional<torch::Tensor>& bias) {
#if defined(CORRAL_AMX_TILES)
  return run_tiles<false>(x, tiles, bias);
#else
  TORCH_CHECK(false, "this build of the kernels does not read AMX-tiled weights");
  return {};
#endif
}

// silu(x @ gate^T + gate_bias) * (x @ up^T + up_bias) for a gate/up weight tiled as one
// [2 * intermediate, in] weight (gate rows first): silu_and_mul(amx_linear(x, tiles, bias)) in
// one pass, bit for bit.
torch::Tensor amx_linear_silu(const torch::Tensor& x, const torch::Tensor& tiles,
                              const c10::optional<torch::Tensor>& bias) {
#if defined(CORRAL_AMX_TILES)
  return run_tiles<true>(x, tiles, bias);
#else
  TORCH_CHECK(false, "this build of the kernels does not read AMX-tiled weights");
  return {};
#endif
}

// Rows row_ids of a tiled weight in the plain layout: [n, in] (the lookups of an embedding table
// that is also the tiled LM head).
torch::Tensor tiled_rows(const torch::Tensor& tiles, const torch::Tensor& row_ids) {
  TORCH_CHECK(tiles.dim() == 5 && tiles.size(2) == kTileRows && tiles.size(3) == kTileOutputs &&
                  tiles.size(4) == 2 && tiles.is_contiguous() && tiles.element_size() == 2,
              "tiled_rows: a contiguous 16-bit tiled weight [out / 16, in / 32, 16, 16, 2]");
  TORCH_CHECK(row_ids.dim() == 1 && row_ids.scalar_type() == at::kLong,
              "tiled_rows: 1-D int64 ids");
  const int64_t num_blocks = tiles.size(0), k_tiles = tiles.size(1), n = row_ids.size(0);
  const int64_t in = k_tiles * kTileInputs;
  auto ids = row_ids.contiguous();
  auto out = torch::empty({n, in}, tiles.options());
  const int64_t* id_ptr = ids.data_ptr<int64_t>();
  const auto* w_ptr = static_cast<const uint16_t*>(tiles.data_ptr());
  auto* o_ptr = static_cast<uint16_t*>(out.data_ptr());
  for (int64_t i = 0; i < n; ++i) {
    const int64_t row = id_ptr[i];
    TORCH_CHECK(row >= 0 && row < num_blocks * kTileOutputs, "tiled_rows: row ", row, " of ",
                num_blocks * kTileOutputs);
    // Input 32 kb + 2 t + e of output j: tile (row / 16, kb), element 32 t + 2 j + e.
    const uint16_t* block = w_ptr + (row / kTileOutputs) * k_tiles * kTileElements;
    const int64_t j = row % kTileOutputs;
    uint16_t* dst = o_ptr + i * in;
    for (int64_t kb = 0; kb < k_tiles; ++kb) {
      const uint16_t* tile = block + kb * kTileElements + 2 * j;
      for (int64_t t = 0; t < kTileRows; ++t) {
        dst[kb * kTileInputs + 2 * t] = tile[t * 2 * kTileOutputs];
        dst[kb * kTileInputs + 2 * t + 1] = tile[t * 2 * kTileOutputs + 1];
      }
    }
  }
  return out;
}
