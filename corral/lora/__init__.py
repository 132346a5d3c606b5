"""Multi-LoRA serving: adapters from PEFT directories, batched application, adapter memory."""
