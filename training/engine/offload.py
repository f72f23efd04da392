"""Block swap and activation offload: the trained transformer's last blocks live in CPU memory (pinned on CUDA) and are
copied to the compute device one block ahead of use, in the forward and again in the backward; the saved activations
of the steps with gradients can move to the CPU as well.

Only a block's frozen tensors (its base weights and buffers) move; its LoRA parameters stay on the device, so their
gradients, the optimizer and its state see the same tensors whatever is swapped. A move replaces a tensor's `.data`,
never the Parameter object.

How the weights are back on the device for the backward:
- With gradient checkpointing the backward recomputes each block's forward, which runs the forward pre-hook again
  (it fetches the block and prefetches the one before it, the next in the backward). The recomputed block's weights
  stay on the device until the block before it is fetched: autograd runs a block's backward before any of the blocks
  before it (it takes ready nodes latest-created first), and what the recomputation saves holds the device storage.
- Without checkpointing autograd would save the weights themselves (or views of them) for the backward, and moving a
  block out would leave it a CPU weight. `saved_tensors` therefore packs a saved view of a swapped tensor as a handle
  (the tensor and the view's geometry) and unpacking it fetches the block again and rebuilds the view on the device;
  so the device copy is freed after each block's forward. The saved-tensor hook rather than a full backward pre-hook
  on the block: autograd unpacks each saved weight exactly when a node needs it, so a weight is on the device then
  whatever order the nodes run in, and the same hook moves the activations to the CPU, so the two compose.
"""
from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

# The attribute of each family's diffusers transformer that lists its blocks, in the order its forward runs them:
# Wan (WanTransformer3DModel) `blocks`, CogVideoX and EasyAnimate (CogVideoXTransformer3DModel,
# EasyAnimateTransformer3DModel) `transformer_blocks`.
BLOCK_LISTS = ("blocks", "transformer_blocks")


def transformer_blocks(transformer: nn.Module) -> nn.ModuleList:
    """The transformer's list of blocks."""
    for name in BLOCK_LISTS:
        blocks = getattr(transformer, name, None)
        if isinstance(blocks, nn.ModuleList):
            return blocks
    raise ValueError(f"{type(transformer).__name__} has no block list ({' or '.join(BLOCK_LISTS)}) to swap")


def in_backward() -> bool:
    """Whether autograd is running a backward now (a checkpointed block's forward is then a recomputation)."""
    return torch._C._current_graph_task_id() != -1


def is_parameter(tensor: torch.Tensor) -> bool:
    """Whether `tensor` is a module's parameter or a view of one (kept where it is rather than offloaded)."""
    return isinstance(tensor, nn.Parameter) or isinstance(tensor._base, nn.Parameter)


@dataclass(frozen=True)
class SwappedView:
    """A saved view of a swapped tensor: which tensor, and the view's geometry in its storage."""

    block: int
    tensor: torch.Tensor
    size: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int


class BlockSwap:
    """The last `count` blocks of `transformer` kept in CPU memory and moved to `device` around their use (see the
    module docstring); the other tensors of the transformer go to `device`. `fetched` and `evicted` count the moves
    of each swapped block (by its index among the swapped ones), `most_resident` the most blocks on the device at once."""

    def __init__(self, transformer: nn.Module, count: int, device: torch.device) -> None:
        blocks = transformer_blocks(transformer)
        if not 0 < count <= len(blocks):
            raise ValueError(f"block_swap {count}: the {type(transformer).__name__} has {len(blocks)} blocks; swap "
                             f"1 to {len(blocks)} of them (or 0 for none)")
        self.blocks = list(blocks)[len(blocks) - count:]
        self.device = device
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self.tensors = [[t for t in block.parameters() if not t.requires_grad] + list(block.buffers())
                        for block in self.blocks]
        swapped = {id(t) for tensors in self.tensors for t in tensors}
        for tensor in [*transformer.parameters(), *transformer.buffers()]:
            if id(tensor) not in swapped:
                tensor.data = tensor.data.to(device)
        self.host = [[self._host(t) for t in tensors] for tensors in self.tensors]
        for tensors, hosts in zip(self.tensors, self.host):
            for tensor, host in zip(tensors, hosts):
                tensor.data = host
        self.resident: dict[int, torch.cuda.Event | None] = {}  # block -> the event its copy records (None on CPU)
        self.storages: dict[int, tuple[int, torch.Tensor]] = {}  # storage address on the device -> (block, tensor)
        self.fetched: Counter[int] = Counter()
        self.evicted: Counter[int] = Counter()
        self.most_resident = 0
        transformer.register_forward_pre_hook(self._transformer_starts)
        for index, block in enumerate(self.blocks):
            block.register_forward_pre_hook(lambda *_, i=index: self.use(i))
            block.register_forward_hook(lambda *_, i=index: self._block_ends(i))

    def _host(self, tensor: torch.Tensor) -> torch.Tensor:
        host = tensor.data.to("cpu").contiguous()
        return host.pin_memory() if self.cuda else host

    def fetch(self, block: int) -> None:
        """Start copying `block` to the device (on the side stream on CUDA); nothing when it is there already."""
        if block in self.resident:
            return
        event = None
        if self.cuda:
            compute = torch.cuda.current_stream(self.device)
            with torch.cuda.stream(self.stream):
                copies = [host.to(self.device, non_blocking=True) for host in self.host[block]]
                event = torch.cuda.Event()
                event.record(self.stream)
            for copy in copies:
                copy.record_stream(compute)  # the compute stream uses it: not reused before that work is done
        else:
            copies = [host.to(self.device) for host in self.host[block]]
        for tensor, copy in zip(self.tensors[block], copies):
            tensor.data = copy
            self.storages[copy.untyped_storage().data_ptr()] = (block, tensor)
        self.resident[block] = event
        self.fetched[block] += 1
        self.most_resident = max(self.most_resident, len(self.resident))

    def ready(self, block: int) -> None:
        """`block` on the device and its copy finished before the compute stream goes on."""
        self.fetch(block)
        event = self.resident[block]
        if event is not None:
            torch.cuda.current_stream(self.device).wait_event(event)

    def evict(self, block: int) -> None:
        """`block`'s tensors back to their CPU copies (frozen: nothing to copy back); its device copies are freed."""
        if block not in self.resident:
            return
        del self.resident[block]
        for tensor, host in zip(self.tensors[block], self.host[block]):
            self.storages.pop(tensor.untyped_storage().data_ptr(), None)
            tensor.data = host
        self.evicted[block] += 1

    def use(self, block: int) -> None:
        """Before `block` runs: it on the device, the next block of this pass (forward: the one after; backward: the
        one before) being fetched, and any other swapped block moved out."""
        following = block - 1 if in_backward() else block + 1
        self.ready(block)
        for other in [b for b in self.resident if b not in (block, following)]:
            self.evict(other)
        if 0 <= following < len(self.blocks):
            self.fetch(following)

    def _transformer_starts(self, *_: Any) -> None:
        if not in_backward():
            self.fetch(0)  # overlaps the embeddings and the blocks that stay on the device

    def _block_ends(self, block: int) -> None:
        if not in_backward():  # a recomputed block's backward comes next: the block before it evicts it
            self.evict(block)

    def pack(self, tensor: torch.Tensor) -> SwappedView | None:
        """A handle for a saved view of a swapped tensor that is on the device (None for any other tensor)."""
        if tensor.device.type != self.device.type or tensor.is_sparse:
            return None
        found = self.storages.get(tensor.untyped_storage().data_ptr())
        if found is None or found[1].dtype != tensor.dtype:
            return None
        block, owner = found
        return SwappedView(block, owner, tuple(tensor.shape), tuple(tensor.stride()),
                           tensor.storage_offset() - owner.storage_offset())

    def unpack(self, view: SwappedView) -> torch.Tensor:
        self.use(view.block)
        data = view.tensor.data
        return data.as_strided(view.size, view.stride, data.storage_offset() + view.offset)


@contextlib.contextmanager
def saved_tensors(offload: bool, swap: BlockSwap | None, device: torch.device) -> Iterator[None]:
    """Inside, autograd saves its tensors for the backward as block swap and activation offload need: views of swapped
    weights as handles (re-fetched in the backward), and with `offload` every other tensor but a parameter on the CPU
    (pinned on CUDA, as torch's `save_on_cpu` does, whose hooks these are). Nothing changes when neither is asked."""
    if not offload and swap is None:
        yield
        return
    on_cpu = torch.autograd.graph.save_on_cpu(pin_memory=device.type == "cuda")

    def pack(tensor: torch.Tensor) -> Any:
        view = swap.pack(tensor) if swap is not None else None
        if view is not None:
            return view
        if offload and not is_parameter(tensor):
            return "cpu", on_cpu.pack_hook(tensor)
        return "kept", tensor

    def unpack(packed: Any) -> torch.Tensor:
        if isinstance(packed, SwappedView):
            return swap.unpack(packed)
        where, value = packed
        return on_cpu.unpack_hook(value) if where == "cpu" else value

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield

