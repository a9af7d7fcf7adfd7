"""What a worker measures for the ``train_step`` metric: the memory of one training step of a cell.

One step is a forward and a backward pass over the cell's batch: ``batch_size`` sequences of
``context_len`` tokens, next-token cross-entropy, the decoder's own layers (harness/model/training.py).
Its peak is taken like a decode cell's (docs/design.md, "Peak memory"): on CUDA the allocator's peak
after a reset, on CPU this fresh worker's peak resident set above its baseline; both over building
the model, the forward and the backward pass, so the peak holds weights, gradients and activations.
Beside it, autograd's saved tensors are counted (each storage once) and the K/V slots among them,
which the runner checks against the accounting (harness.accounting.train_kv_activation_bytes).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from harness.measure.cell_worker import enter_device
from harness.measure.memory import CpuMemoryTracker, CudaMemoryTracker
from harness.measure.protocol import CellRequest
from harness.model import build_decoder
from harness.model.training import causal_forward, saved_bytes


def measure_train_step(request: CellRequest) -> dict[str, Any]:
    """Build the cell's model, run one training step over its batch, and return what it held.

    ``peak_memory_bytes`` (and on CUDA ``peak_reserved_bytes``), ``saved_activation_bytes`` (what
    autograd kept for the backward pass, parameters left out) and ``kv_activation_bytes`` (the
    producers' K/V slots among them).
    """
    device = request.device
    enter_device(device)
    cuda = device.startswith("cuda")
    model = request.model
    variant = request.variant
    batch_size, seq_len = request.batch_size, request.context_len
    generator = torch.Generator(device=device).manual_seed(request.seed)
    tokens = torch.randint(0, model.vocab_size, (batch_size, seq_len + 1), device=device, generator=generator)
    tracker = CudaMemoryTracker(device) if cuda else CpuMemoryTracker()
    with tracker.track():
        decoder = build_decoder(model, variant, dtype=request.dtype, device=device, seed=request.seed)
        with saved_bytes() as saved:
            logits, cache = causal_forward(decoder, tokens[:, :-1])  # [B, T, vocab_size]
            loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
        kv_bytes = saved.of(cache.tensors())
        parameters = saved.of(list(decoder.parameters()))
        del logits, cache
        loss.backward()
        if cuda:
            torch.cuda.synchronize(device)
    peak = tracker.result()
    return {
        "peak_memory_bytes": peak.peak_allocated_bytes,
        "peak_reserved_bytes": peak.peak_reserved_bytes,
        "saved_activation_bytes": saved.total_bytes - parameters,
        "kv_activation_bytes": kv_bytes,
    }
