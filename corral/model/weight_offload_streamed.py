"""Offloaded layers copied into device buffers as they are needed (see weight_offload.py).

The offloaded copies are the layers' packed bytes in pinned host memory ("host") or in a file
mapping ("disk", corral/model/weight_offload_mapped.py LayerFile). Two device buffers (slots)
take turns; a layer's tensors are views of the slot holding it. On CUDA the copies run on a side
stream, ordered by events: a slot is refilled only after the compute stream has finished with
its last layer, and a layer computes only after its copy has landed. Elsewhere (the CPU, where
tests run this path) a helper thread copies.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from corral.model.weight_offload import LayerOffload, TensorRef, pack_layer


class StreamedLayerOffload(LayerOffload):
    """Offloaded layers streamed into two device slots, the next while the current computes."""

    def __init__(
        self,
        refs: dict[int, tuple[list[TensorRef], int]],
        device: torch.device,
        target: str,
        directory: str | None = None,
    ) -> None:
        layer_ids = sorted(refs)
        super().__init__(layer_ids, [refs[index][1] for index in layer_ids])
        self.target = target
        self.device = device
        self._cuda = device.type == "cuda"
        self._refs = {index: refs[index][0] for index in layer_ids}
        self._sizes = {index: refs[index][1] for index in layer_ids}
        self._sources: dict[int, torch.Tensor] = {}
        if target == "disk":
            from corral.model.weight_offload_mapped import LayerFile

            self.file = LayerFile(refs, directory)
            for index in layer_ids:
                self._sources[index] = self.file.region(index)[: self._sizes[index]]
        else:
            pin = self._cuda and torch.cuda.is_available()
            for index in layer_ids:
                packed = torch.empty(self._sizes[index], dtype=torch.uint8, pin_memory=pin)
                pack_layer(self._refs[index], packed)
                self._sources[index] = packed
        for index in layer_ids:  # the device copies go; views of a slot take their place
            for ref in self._refs[index]:
                setattr(ref.holder, ref.attribute, None)
        num_slots = min(2, len(layer_ids))
        slot_bytes = max(self._sizes.values())
        self._slots = [
            torch.empty(slot_bytes, dtype=torch.uint8, device=device) for _ in range(num_slots)
        ]
        self._slot_layer: list[int | None] = [None] * num_slots  # the layer each slot holds
        self._ready: dict[int, Any] = {}  # layer -> its copy's Future (CPU) or Event (CUDA)
        self._slot_free: list[Any] = [None] * num_slots  # CUDA: compute done with the slot
        self._views: dict[tuple[int, int], list[torch.Tensor]] = {}
        self._in_use: int | None = None
        if self._cuda:
            self._stream = torch.cuda.Stream(device)
        else:
            self._copier = ThreadPoolExecutor(1, thread_name_prefix="corral-offload")
        if self._cuda:
            torch.cuda.empty_cache()

    @property
    def num_slot_bytes(self) -> int:
        """Device memory the slots take."""
        return sum(slot.numel() for slot in self._slots)

    def _slot_of(self, index: int) -> int | None:
        return self._slot_layer.index(index) if index in self._slot_layer else None

    def _start(self, index: int) -> None:
        """Begin copying layer index into a slot, unless one holds it or is getting it."""
        if self._slot_of(index) is not None:
            return
        busy = self._slot_of(self._in_use) if self._in_use is not None else None
        slot = next(s for s in range(len(self._slots)) if s != busy)
        evicted = self._slot_layer[slot]
        if evicted is not None:
            self._ready.pop(evicted, None)
        self._slot_layer[slot] = index
        target = self._slots[slot][: self._sizes[index]]
        source = self._sources[index]
        if self._cuda:
            with torch.cuda.stream(self._stream):
                if self._slot_free[slot] is not None:
                    self._stream.wait_event(self._slot_free[slot])
                target.copy_(source, non_blocking=True)
                done = torch.cuda.Event()
                done.record(self._stream)
            self._ready[index] = done
        else:
            self._ready[index] = self._copier.submit(target.copy_, source)

    def bring_in(self, index: int, next_index: int) -> None:
        if self._in_use is not None:
            self.release(self._in_use)
        self._start(index)
        ready = self._ready[index]
        if isinstance(ready, Future):
            ready.result()
        else:
            torch.cuda.current_stream(self.device).wait_event(ready)
        slot = self._slot_of(index)
        assert slot is not None
        views = self._views.get((index, slot))
        if views is None:
            views = [ref.view_in(self._slots[slot]) for ref in self._refs[index]]
            self._views[(index, slot)] = views
        for ref, view in zip(self._refs[index], views, strict=True):
            setattr(ref.holder, ref.attribute, view)
        self._in_use = index
        self._start(next_index)

    def release(self, index: int) -> None:
        if self._in_use != index:
            return
        if self._cuda:
            slot = self._slot_of(index)
            done = torch.cuda.Event()
            done.record(torch.cuda.current_stream(self.device))
            self._slot_free[slot] = done
        self._in_use = None

    def close(self) -> None:
        if self._cuda:
            self._stream.synchronize()
        else:
            self._copier.shutdown(wait=True)
        self._ready.clear()
        if self.target == "disk":
            self.file.close()
