"""Weight offloading (`--offload-layers N` / `--cpu-offload-gb G`): some decoder layers' weights
live off the compute device and come in, layer by layer, just before they run, with the next
offloaded layer's transfer started while the current one computes.

Which layers: the fewest, evenly spaced through the stack, whose weights reach the asked size
(choose_offloaded_layers); evenly spaced so each transfer overlaps the resident layers computed
before it. Two ways to hold them (`offload_to`):

- "disk" (the default on CPU; corral/model/weight_offload_mapped.py): the layers' weights are
  written once to one file and memory-mapped; the tensors the model computes with are views of
  the mapping, so nothing is copied. A helper thread maps the next offloaded layer's pages in
  (MADV_POPULATE_READ, read from disk or the page cache) while the current layer computes, and
  each layer's pages leave the process's memory after it runs (MADV_DONTNEED), so the process
  holds the resident layers only; the kernel's page cache keeps what the machine can spare.
- "host" (the default on CUDA; corral/model/weight_offload_streamed.py): the layers' weights
  stay in pinned host memory; two device buffers take turns: while one holds the running layer,
  the next offloaded layer is copied into the other on a side stream. The device holds the
  resident layers plus two layers' buffers.

Either way the bytes the model computes with are the loaded weights, so outputs are exactly
those without offloading.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from corral.model.device import dtype_bytes
from corral.model.offload_plan import plan_offloaded_layers
from corral.model.quantization import Int8Weight

logger = logging.getLogger(__name__)

OFFLOAD_TARGETS = ("auto", "host", "disk")
# The tensors of a SparseMoE block that are weights (its expert_counts is a live counter).
_MOE_WEIGHTS = ("router", "gate_up", "down", "shared_gate_up", "shared_down", "shared_gate")
_TENSOR_ALIGN_BYTES = 64


def resolve_offload_target(target: str, device: torch.device) -> str:
    """ "host" or "disk" for this device; ValueError for a target that would not move anything."""
    if target not in OFFLOAD_TARGETS:
        raise ValueError(f"offload_to {target!r} is not one of {', '.join(OFFLOAD_TARGETS)}")
    if target == "auto":
        return "disk" if device.type == "cpu" else "host"
    if target == "host" and device.type == "cpu":
        raise ValueError(
            "offload_to 'host' with the model on the CPU: its weights are in host memory "
            "already; offload to 'disk' instead"
        )
    return target


class TensorRef:
    """One weight tensor of a layer: where it is held (an object and attribute), its dtype,
    shape and byte offset inside the layer's packed bytes."""

    __slots__ = ("holder", "attribute", "dtype", "shape", "offset", "nbytes")

    def __init__(self, holder: Any, attribute: str, tensor: torch.Tensor, offset: int) -> None:
        self.holder, self.attribute = holder, attribute
        self.dtype, self.shape = tensor.dtype, tuple(tensor.shape)
        self.offset, self.nbytes = offset, tensor.numel() * tensor.element_size()

    def view_in(self, packed: torch.Tensor) -> torch.Tensor:
        """This tensor as a view of a layer's packed bytes (a uint8 tensor)."""
        raw = packed[self.offset : self.offset + self.nbytes]
        return raw.view(self.dtype).view(self.shape)

    def point_at(self, packed: torch.Tensor) -> None:
        setattr(self.holder, self.attribute, self.view_in(packed))


def layer_tensor_refs(layer: Any) -> tuple[list[TensorRef], int]:
    """Every weight tensor of a DecoderLayerWeights (through int8 weights and MoE blocks), laid
    out back to back at 64-byte aligned offsets; and the packed size in bytes."""
    holders: list[tuple[Any, str]] = []
    for name in type(layer).__slots__:
        value = getattr(layer, name)
        if isinstance(value, torch.Tensor):
            holders.append((layer, name))
        elif isinstance(value, Int8Weight):
            holders += [(value, "qweight"), (value, "scales")]
        elif value is not None and name == "moe":
            holders += [(value, part) for part in _MOE_WEIGHTS if getattr(value, part) is not None]
    refs, offset = [], 0
    for holder, attribute in holders:
        ref = TensorRef(holder, attribute, getattr(holder, attribute), offset)
        refs.append(ref)
        offset += -(-ref.nbytes // _TENSOR_ALIGN_BYTES) * _TENSOR_ALIGN_BYTES
    return refs, offset


def pack_layer(refs: list[TensorRef], packed: torch.Tensor) -> None:
    """Copy a layer's tensors (still held by their owners) into its packed bytes."""
    for ref in refs:
        ref.view_in(packed).copy_(getattr(ref.holder, ref.attribute))


class LayerOffload(ABC):
    """The offloaded layers of one model. The forward pass walks the decoder stack through
    iterate(), which brings each offloaded layer in before yielding it and starts the next
    transfer; outside a forward pass, layer() gives one layer ready to compute with."""

    def __init__(self, layer_ids: list[int], layer_nbytes: list[int]) -> None:
        self.layer_ids = layer_ids
        self.offloaded_bytes = sum(layer_nbytes)
        self._next = {
            index: layer_ids[(position + 1) % len(layer_ids)]
            for position, index in enumerate(layer_ids)
        }

    def iterate(self, layers: Sequence[Any]) -> Iterator[Any]:
        """The model's decoder layers in order, each offloaded one brought in first."""
        for index, layer in enumerate(layers):
            if index not in self._next:
                yield layer
                continue
            self.bring_in(index, self._next[index])
            yield layer
            self.release(index)

    def layer(self, layers: Sequence[Any], index: int) -> Any:
        """Layer index, ready to compute with until the next call of layer() or iterate()."""
        if index in self._next:
            self.bring_in(index, self._next[index])
        return layers[index]

    @abstractmethod
    def bring_in(self, index: int, next_index: int) -> None:
        """Make layer index's weights computable (waiting for its transfer, or doing it now)
        and start bringing in next_index."""

    @abstractmethod
    def release(self, index: int) -> None:
        """Layer index has run for this step."""

    @abstractmethod
    def close(self) -> None:
        """Stop the transfers and let go of the offloaded copies."""

    target = "none"  # "disk" or "host" in the subclasses


def plan_weight_offload(
    model_config: Any, arch: Any, dtype: torch.dtype, device: torch.device
) -> tuple[list[int], str | None]:
    """The layers a ModelConfig offloads for this model, and where to ("host" or "disk"; None
    when none is offloaded)."""
    layer_ids = plan_offloaded_layers(
        arch,
        dtype_bytes(dtype),
        model_config.offload_layers,
        model_config.cpu_offload_gb,
    )
    if not layer_ids:
        return [], None
    return layer_ids, resolve_offload_target(model_config.offload_to, device)


def install_weight_offload(
    model: Any, layer_ids: list[int], target: str, directory: str | None = None
) -> LayerOffload | None:
    """Offload these layers of a loaded model and set model.offload (None: nothing asked)."""
    if not layer_ids:
        return None
    target = resolve_offload_target(target, model.device)
    refs = {index: layer_tensor_refs(model.layers[index]) for index in layer_ids}
    if target == "disk" and model.device.type == "cpu":
        from corral.model.weight_offload_mapped import MappedLayerOffload

        offload: LayerOffload = MappedLayerOffload(refs, directory)
    else:
        from corral.model.weight_offload_streamed import StreamedLayerOffload

        offload = StreamedLayerOffload(refs, model.device, target, directory)
    model.offload = offload
    logger.info(
        "offloaded %d of %d decoder layers to %s (%.1f MiB): %s",
        len(layer_ids),
        len(model.layers),
        offload.target,
        offload.offloaded_bytes / 2**20,
        layer_ids,
    )
    return offload
