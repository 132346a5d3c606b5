// The kernels' entry points, for the files that call each other's (each defined in the file
// its comment names; cpu_kernels.cpp binds them to Python).
#pragma once

#include <torch/extension.h>

#include <vector>

// Defined in cpu_kernels.cpp.
int64_t prefill_attention_max_tokens();
void prefill_attention(torch::Tensor out, torch::Tensor query, torch::Tensor key,
                       torch::Tensor value, torch::Tensor spans, double scale);
void paged_decode_attention(torch::Tensor out, torch::Tensor query, torch::Tensor key_cache,
                            torch::Tensor value_cache, torch::Tensor block_table,
                            torch::Tensor seq_lens, double scale, int64_t window,
                            c10::optional<torch::Tensor> key_scale,
                            c10::optional<torch::Tensor> value_scale,
                            c10::optional<torch::Tensor> sink_query, int64_t num_sinks);
// Defined in cpu_linear.cpp.
torch::Tensor few_row_linear(torch::Tensor x, torch::Tensor weight,
                             c10::optional<torch::Tensor> bias);
torch::Tensor few_row_linear_silu(torch::Tensor x, torch::Tensor weight,
                                  c10::optional<torch::Tensor> bias);
// Defined in cpu_panel_linear.cpp.
bool packed_weights_supported();
torch::Tensor panel_linear(const torch::Tensor& x, const torch::Tensor& panels,
                           const c10::optional<torch::Tensor>& bias);
torch::Tensor packed_rows(torch::Tensor weight, torch::Tensor row_ids);
// Defined in cpu_amx_linear.cpp.
int64_t check_tiled_linear(const torch::Tensor& x, const torch::Tensor& tiles,
                           const c10::optional<torch::Tensor>& bias, bool silu);
bool amx_tiles_supported();
void allow_amx_tiles(bool allowed);
torch::Tensor amx_linear(const torch::Tensor& x, const torch::Tensor& tiles,
                         const c10::optional<torch::Tensor>& bias);
torch::Tensor amx_linear_silu(const torch::Tensor& x, const torch::Tensor& tiles,
                              const c10::optional<torch::Tensor>& bias);
torch::Tensor tiled_rows(const torch::Tensor& tiles, const torch::Tensor& row_ids);
// Defined in cpu_dot_tiles.cpp.
bool dot_tiles_supported();
void set_dot_tiles_form(int64_t form);
int64_t dot_tiles_form();
torch::Tensor dot_tiles_linear(const torch::Tensor& x, const torch::Tensor& tiles,
                               const c10::optional<torch::Tensor>& bias);
torch::Tensor dot_tiles_linear_silu(const torch::Tensor& x, const torch::Tensor& tiles,
                                    const c10::optional<torch::Tensor>& bias);
// Defined in cpu_fused.cpp.
torch::Tensor rms_norm(torch::Tensor x, torch::Tensor weight, double eps,
                       c10::optional<torch::Tensor> residual);
void rotary_inplace(torch::Tensor qkv, torch::Tensor positions, torch::Tensor cos,
                    torch::Tensor sin, int64_t num_heads, int64_t head_dim);
torch::Tensor silu_and_mul(torch::Tensor gate_up);
// Defined in cpu_argmax.cpp.
torch::Tensor argmax_rows(const torch::Tensor& logits);
// Defined in cpu_kv_write.cpp.
void write_kv_cache(torch::Tensor key, torch::Tensor value, torch::Tensor key_cache,
                    torch::Tensor value_cache, torch::Tensor slot_mapping);
// Defined in cpu_lora.cpp.
void lora_shrink_expand(torch::Tensor out, torch::Tensor x, torch::Tensor a, torch::Tensor b,
                        torch::Tensor part_offsets, torch::Tensor rows, torch::Tensor seg_starts,
                        torch::Tensor seg_slots, torch::Tensor seg_ranks);

// Defined in cpu_int8.cpp.
torch::Tensor int8_linear(torch::Tensor x, torch::Tensor qweight, torch::Tensor scales,
                          c10::optional<torch::Tensor> bias);
// Defined in cpu_int8_panel.cpp.
bool int8_panels_supported();
torch::Tensor int8_panel_linear(const torch::Tensor& x, const torch::Tensor& panels,
                                const torch::Tensor& scales,
                                const c10::optional<torch::Tensor>& bias);

// Defined in cpu_layer_loop.cpp: a model's decoder stack for decode steps (decode rows only, no
// LoRA, tensor parallelism, MoE, q/k norm, quantized KV, windows or sinks; dense bf16/fp32 or
// int8 linear weights), the same kernels in the same order as LlamaFamilyModel._forward_fused.
// Its weights, caches and constants are bound once (pybind11 converting a layer's fifteen
// tensors at every call cost more than the small kernels it saves calling from Python).
class LayerLoop {
 public:
  // layers[i]: layer i's tensors in LayerWeight order (cpu_layer_loop.cpp); key_caches /
  // value_caches per layer. embed (packed as corral/model/packed_weight.py when embed_packed),
  // lm_head (weight or int8 values, scales, bias; empty for none) and the rotary tables cos / sin
  // serve decode_greedy only.
  LayerLoop(std::vector<std::vector<c10::optional<torch::Tensor>>> layers,
            std::vector<torch::Tensor> key_caches, std::vector<torch::Tensor> value_caches,
            torch::Tensor final_norm, double scale, double eps, int64_t num_heads,
            int64_t num_kv_heads, int64_t head_dim, c10::optional<torch::Tensor> embed,
            bool embed_packed, std::vector<c10::optional<torch::Tensor>> lm_head,
            c10::optional<torch::Tensor> cos, c10::optional<torch::Tensor> sin);
  torch::Tensor decode_layers(torch::Tensor residual, const torch::Tensor& rotary_rows,
                              const torch::Tensor& cos, const torch::Tensor& sin,
                              const torch::Tensor& slot_mapping, const torch::Tensor& block_table,
                              const torch::Tensor& seq_lens, bool use_kernel) const;
  std::vector<std::vector<int64_t>> decode_greedy(
      const std::vector<int64_t>& token_ids, const std::vector<int64_t>& positions,
      const std::vector<int64_t>& row_seqs, const std::vector<int64_t>& last_rows,
      int64_t num_steps, const std::vector<int64_t>& block_table, int64_t width,
      int64_t block_size, bool first_use_kernel, bool use_kernel) const;

 private:
  std::vector<std::vector<c10::optional<torch::Tensor>>> layers_;
  std::vector<torch::Tensor> key_caches_, value_caches_;
  torch::Tensor final_norm_;
  double scale_, eps_;
  int64_t num_heads_, num_kv_heads_, head_dim_;
  torch::Tensor embed_;
  bool embed_packed_;
  std::vector<c10::optional<torch::Tensor>> lm_head_;
  torch::Tensor cos_, sin_;
};
void bind_layer_loop(pybind11::module_& m);
