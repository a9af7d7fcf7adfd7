"""The byte-level corpus of ``attnbench train``: its bytes, a fixed train/validation split, and batches.

The built-in corpus is CPython's ``pydoc_data.topics`` (the reference-manual topics ``help()`` shows, about
0.47 MB of English text shipped with every CPython), its topics joined in sorted key order so the bytes are
the same wherever one CPython version runs. Tokens are bytes (a vocabulary of 256). The validation split is the
corpus's last ``validation_fraction`` of bytes: contiguous, never trained on, the same for every seed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from harness.errors import UserError
from harness.scenario.quality import QualitySpec

TOPIC_SEPARATOR = "\n\n"


def pydoc_topics_bytes() -> bytes:
    """CPython's pydoc topics, joined in sorted key order, as UTF-8."""
    from pydoc_data import topics  # the standard library's; imported here, where it is used

    return TOPIC_SEPARATOR.join(topics.topics[key] for key in sorted(topics.topics)).encode("utf-8")


@dataclass(frozen=True)
class Corpus:
    """A corpus split into train and validation bytes, as uint8 tensors on the CPU."""

    name: str  # "pydoc-topics" or the file as given
    sha256: str  # of the bytes used (after corpus_bytes)
    train: Tensor  # [n_train] uint8
    validation: Tensor  # [n_validation] uint8

    @property
    def n_bytes(self) -> int:
        return int(self.train.numel() + self.validation.numel())


def load_corpus(quality: QualitySpec, base_dir: Path, source: str) -> Corpus:
    """The scenario's corpus; UserError naming ``quality.corpus_file`` when it cannot be read or is too small."""
    if quality.corpus_file is not None:
        path = Path(quality.corpus_file)
        path = path if path.is_absolute() else base_dir / path
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise UserError(f"{path}: no such file", source=source, field="quality.corpus_file") from None
        except OSError as exc:
            raise UserError(
                f"{path}: cannot read: {exc.strerror or exc}", source=source, field="quality.corpus_file"
            ) from None
        name = quality.corpus_file
    else:
        data, name = pydoc_topics_bytes(), quality.corpus or "pydoc-topics"
    if quality.corpus_bytes is not None:
        data = data[: quality.corpus_bytes]
    n_validation = int(len(data) * quality.validation_fraction)
    needed = quality.seq_len + 1  # one training window, and one validation window
    if n_validation < needed or len(data) - n_validation < needed:
        field = "quality.corpus_file" if quality.corpus_file is not None else "quality.corpus_bytes"
        raise UserError(
            f"{len(data)} bytes split {len(data) - n_validation}/{n_validation} cannot fill a window of "
            f"seq_len + 1 = {needed} bytes on both sides",
            source=source,
            field=field,
        )
    tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    split = len(data) - n_validation
    return Corpus(name, hashlib.sha256(data).hexdigest(), tokens[:split].clone(), tokens[split:].clone())


def training_batch(train: Tensor, batch_size: int, seq_len: int, generator: torch.Generator) -> Tensor:
    """``batch_size`` windows of ``seq_len + 1`` bytes at offsets drawn from ``generator``: [B, seq_len + 1] int64."""
    starts = torch.randint(0, train.numel() - seq_len, (batch_size,), generator=generator)  # [B]
    offsets = starts[:, None] + torch.arange(seq_len + 1)  # [B, seq_len + 1]
    return train[offsets].long()


def validation_windows(validation: Tensor, seq_len: int, max_tokens: int | None) -> Tensor:
    """Consecutive non-overlapping windows of ``seq_len + 1`` bytes over the validation split (at most
    ``max_tokens`` predicted bytes): [n_windows, seq_len + 1] int64, each predicting its last seq_len bytes."""
    n_windows = (validation.numel() - 1) // seq_len
    if max_tokens is not None:
        n_windows = max(1, min(n_windows, max_tokens // seq_len))
    starts = torch.arange(n_windows) * seq_len  # [n_windows]
    offsets = starts[:, None] + torch.arange(seq_len + 1)  # [n_windows, seq_len + 1]
    return validation[offsets].long()
