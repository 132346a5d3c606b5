"""The supported architectures (torch): the Llama family (Llama, Mistral, Qwen2), exact against
Hugging Face transformers; corral/model/arch.py describes their shapes without torch."""
