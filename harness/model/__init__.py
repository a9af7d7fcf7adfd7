"""Model building: the decoder stack of a variant, its static KV cache, and the attention backends.

The only part of the harness besides measuring that imports torch.
"""

from __future__ import annotations

import torch

from harness.model.attention import BACKENDS, attend, available_backends, resolve_backend
from harness.model.decoder import Decoder, KVCache
from harness.scenario.schema import ModelSpec
from harness.variants import Variant

__all__ = ["BACKENDS", "Decoder", "KVCache", "attend", "available_backends", "build_decoder", "resolve_backend"]

TORCH_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_decoder(
    model: ModelSpec,
    variant: Variant,
    *,
    dtype: str,
    device: str | torch.device,
    backend: str = "eager",
    seed: int = 0,
    random_weights: bool = True,
) -> Decoder:
    """The decoder stack with deterministic weights from ``seed``, created directly in ``dtype`` on ``device``.

    The modules are laid out on the meta device first, so no float32 copy or default initialisation
    is ever materialised: peak memory is the weights once. ``random_weights=False`` zeroes them
    instead, which takes the same memory (every page is written) in a fraction of the time: for
    probes that only ask whether a configuration fits.
    """
    device = torch.device(device)
    with torch.device("meta"):
        decoder = Decoder(model, variant, backend=backend)
    decoder = decoder.to(dtype=TORCH_DTYPES[dtype]).to_empty(device=device)
    if random_weights:
        decoder.init_weights(torch.Generator(device=device).manual_seed(seed))
    else:
        for tensor in decoder.parameters():
            tensor.detach().zero_()
    return decoder.eval()
