"""Model building: the decoder stack of a variant, its static KV cache, and the attention backends.

The only part of the harness besides measuring that imports torch.
"""

from __future__ import annotations

from typing import Literal

import torch

from harness.model.attention import attend, available_backends, resolve_backend
from harness.model.decoder import Decoder, KVCache
from harness.scenario.schema import ModelSpec
from harness.variants import Variant

__all__ = ["Decoder", "KVCache", "attend", "available_backends", "build_decoder", "resolve_backend"]

TORCH_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_decoder(
    model: ModelSpec,
    variant: Variant,
    *,
    dtype: str,
    device: str | torch.device,
    backend: str = "eager",
    seed: int = 0,
    weights: Literal["random", "synthetic", "zeros"] = "random",
) -> Decoder:
    """The decoder stack with deterministic weights from ``seed``, created directly in ``dtype`` on ``device``.

    The modules are laid out on the meta device first, so no float32 copy or default initialisation
    is ever materialised: peak memory is the weights once. ``weights``:

    - ``"random"``: every value drawn from Normal(0, 0.02) (norms at 1), for anything that computes
      with them (logits, training);
    - ``"synthetic"``: the same distribution drawn for a block at the head of each tensor and copied
      along it (:meth:`Decoder.init_weights_synthetic`), several times faster: for timing, whose
      kernels do the same work whatever the values;
    - ``"zeros"``: the same memory (every page is written) in a fraction of the time: for probes that
      only ask whether a configuration fits.
    """
    device = torch.device(device)
    with torch.device("meta"):
        decoder = Decoder(model, variant, backend=backend)
    decoder = decoder.to(dtype=TORCH_DTYPES[dtype]).to_empty(device=device)
    if weights == "random":
        decoder.init_weights(torch.Generator(device=device).manual_seed(seed))
    elif weights == "synthetic":
        decoder.init_weights_synthetic(torch.Generator(device=device).manual_seed(seed))
    elif weights == "zeros":
        for tensor in decoder.parameters():
            tensor.detach().zero_()
    else:
        raise ValueError(f"weights must be 'random', 'synthetic' or 'zeros', got {weights!r}")
    return decoder.eval()
