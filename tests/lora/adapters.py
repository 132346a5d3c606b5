"""Tiny random LoRA adapters built with peft (the oracle's own format), and peft's outputs."""

from __future__ import annotations

from pathlib import Path

import torch

ALL_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# name -> LoraConfig options: different ranks, targets and scalings, one each.
ADAPTERS = {
    "all-r8": dict(r=8, lora_alpha=16, target_modules=ALL_MODULES),
    "qv-r4-rslora": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_rslora=True),
    "mlp-r16": dict(
        r=16,
        lora_alpha=32,
        target_modules=["gate_proj", "up_proj", "down_proj"],
        rank_pattern={"up_proj": 4},
        alpha_pattern={"down_proj": 8},
    ),
}


def build_adapter(base_dir: Path, out_dir: Path, seed: int, scale: float = 0.3, **options) -> Path:
    """Save a peft LoRA adapter of the model in base_dir with random A and B (B is zero at
    peft's default init, which would make the adapter a no-op)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(lora_dropout=0.0, **options))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn_like(parameter) * scale)
    model.save_pretrained(out_dir)
    return out_dir


@torch.inference_mode()
def peft_greedy(base_dir: Path, adapter_dir: Path | None, prompt: list[int], max_tokens: int):
    """(token ids, log-softmax rows) of transformers + peft greedy generation (fp32)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    result = model.generate(
        input_ids=torch.tensor([prompt]),
        max_new_tokens=max_tokens,
        min_new_tokens=max_tokens,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
        output_logits=True,
        return_dict_in_generate=True,
    )
    tokens = result.sequences[0, len(prompt) :].tolist()
    return tokens, torch.log_softmax(torch.cat(result.logits).float(), dim=-1)
