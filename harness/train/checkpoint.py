"""Checkpoints in the decoder's own format: one ``torch.save`` file holding the model shape, the variant,
how many steps trained it and the state dict. Read with ``torch.load(weights_only=True)``, which
unpickles tensors and plain containers only, never arbitrary objects (no code runs from the file).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from harness.errors import UserError
from harness.model.decoder import Decoder
from harness.results.store import write_bytes_atomic
from harness.scenario.schema import ModelSpec
from harness.variants import Variant

CHECKPOINT_FORMAT = "attnbench-decoder/1"


@dataclass(frozen=True)
class Checkpoint:
    model: ModelSpec
    variant: Variant
    trained_steps: int | None  # optimizer steps that produced it; None when unknown
    state: dict[str, torch.Tensor]


def save_checkpoint(decoder: Decoder, trained_steps: int | None, path: Path) -> None:
    """Write ``decoder``'s weights (on the CPU) with its shape, atomically."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model": decoder.spec.model_dump(),
        "variant": decoder.variant.to_payload(),
        "trained_steps": trained_steps,
        "state_dict": {name: tensor.detach().cpu() for name, tensor in decoder.state_dict().items()},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint; UserError naming the file and what is wrong with it."""
    source = str(path)
    try:
        payload: Any = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError("no such file", source=source) from None
    except IsADirectoryError:
        raise UserError("is a directory, not a checkpoint", source=source) from None
    except Exception as exc:  # torch raises many kinds for a file that is not its format
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"not a readable checkpoint: {reason}", source=source) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"not an attnbench checkpoint (expected format {CHECKPOINT_FORMAT!r})", source=source)
    for key in ("model", "variant", "state_dict"):
        if not isinstance(payload.get(key), dict):
            raise UserError("missing or not a table", source=source, field=key)
    try:
        model = ModelSpec.model_validate(payload["model"])
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        raise UserError(err["msg"], source=source, field=f"model.{'.'.join(map(str, err['loc']))}") from None
    try:
        variant = Variant.from_payload(payload["variant"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"not a variant: {exc}", source=source, field="variant") from None
    steps = payload.get("trained_steps")
    return Checkpoint(model, variant, steps if isinstance(steps, int) else None, payload["state_dict"])


def restore(checkpoint: Checkpoint, dtype: str, device: str, source: str) -> Decoder:
    """The checkpoint's decoder in ``dtype`` on ``device``; UserError when its weights do not fit its shape."""
    from harness.model import build_decoder

    decoder = build_decoder(checkpoint.model, checkpoint.variant, dtype=dtype, device=device, weights="zeros")
    try:
        decoder.load_state_dict(checkpoint.state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise UserError(
            f"weights do not fit its shape: {' '.join(first[:2])}", source=source, field="state_dict"
        ) from None
    return decoder
