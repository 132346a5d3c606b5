"""The adapters an engine serves by name (torch-free; lives in the frontend)."""

from __future__ import annotations

import threading
from pathlib import Path

from corral.lora.adapter import AdapterError, AdapterRef, inspect_adapter
from corral.model.arch import ModelArch


class AdapterRegistry:
    """Name -> checked adapter. add() checks an adapter against the base model before it can be
    named by a request; remove() stops new requests from naming it (requests already admitted
    finish on the weights they started with: the engine keys weights by content, not name)."""

    def __init__(self, arch: ModelArch, max_lora_rank: int, base_model_name: str = "") -> None:
        self.arch = arch
        self.max_lora_rank = max_lora_rank
        self.base_model_name = base_model_name
        self._adapters: dict[str, AdapterRef] = {}
        self._lock = threading.Lock()

    def add(self, name: str, path: str | Path, *, replace: bool = False) -> AdapterRef:
        """Check and register the adapter at path as `name`. Raises AdapterError (bad adapter,
        or the name already taken and replace is False)."""
        if not name or name != name.strip() or "@" in name:
            raise AdapterError(f"LoRA adapter name {name!r} must be non-empty, without '@'")
        if name == self.base_model_name:
            raise AdapterError(f"LoRA adapter name {name!r} is the base model's name")
        with self._lock:
            if name in self._adapters and not replace:
                raise AdapterError(f"a LoRA adapter named {name!r} is already loaded")
        ref = inspect_adapter(name, path, self.arch, self.max_lora_rank)
        with self._lock:
            self._adapters[name] = ref
        return ref

    def remove(self, name: str) -> AdapterRef:
        """Unregister `name`; KeyError if no adapter has that name."""
        with self._lock:
            if name not in self._adapters:
                raise KeyError(f"no LoRA adapter named {name!r} is loaded")
            return self._adapters.pop(name)

    def get(self, name: str) -> AdapterRef | None:
        with self._lock:
            return self._adapters.get(name)

    def adapters(self) -> list[AdapterRef]:
        with self._lock:
            return list(self._adapters.values())

    def resolve(self, name: str, path: str | Path | None = None) -> AdapterRef:
        """The adapter a request names. With a path (the offline LoRARequest), an unknown name
        is registered on the fly; a known name must point at the same directory."""
        ref = self.get(name)
        if ref is None:
            if path is None:
                raise AdapterError(f"no LoRA adapter named {name!r} is loaded")
            return self.add(name, path)
        if path is not None and Path(path).resolve() != Path(ref.path).resolve():
            raise AdapterError(
                f"LoRA adapter {name!r} is loaded from {ref.path}, not {str(path)!r}"
            )
        return ref
