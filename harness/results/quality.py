"""The result file of ``attnbench train``: every variant trained from scratch on a byte corpus over several
seeds, and conversions of a trained checkpoint, with the raw per-seed numbers (docs/results.md, *Quality*).

It lives beside the decode results under ``results/<target>/`` as ``quality_<time>_<commit>.json`` and is
written atomically (harness/results/store.py). It is not a decode result: ``report``'s result discovery
skips it, and :func:`load_quality` reads it.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from harness.errors import UserError, UserErrors, validation_problems
from harness.inputs import read_json
from harness.results.schema import GitInfo
from harness.results.store import MAX_RESULT_BYTES, claim_result_path, write_text_atomic

QUALITY_FORMAT = 1
QUALITY_PREFIX = "quality_"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SeedRun(_Model):
    """One variant trained from scratch with one seed."""

    seed: int
    validation_loss: float  # mean next-byte cross-entropy, nats
    validation_perplexity: float  # exp(validation_loss), per byte
    validation_tokens: int  # bytes predicted
    train_time_s: float  # the optimizer steps alone, no evaluation
    tokens_seen: int  # steps · batch_size · seq_len
    steps: int
    train_loss: list[tuple[int, float]]  # (step, training batch loss in nats) every log_every steps


class VariantQuality(_Model):
    """A variant's runs, one per seed, and the shape that sets its KV cache."""

    variant: str
    spelling: str  # the name grammar's spelling (harness.variants.Variant.describe)
    head_dim: int
    n_heads: int
    n_kv_heads: int
    n_kv_layers: int  # producer layers
    kv_bytes_per_token: int  # harness.accounting.kv_bytes_per_token in the training dtype
    params_total: int
    status: Literal["ok", "error", "unsupported"]
    error: str | None = None
    runs: list[SeedRun] = []


class ConversionRun(_Model):
    """One seed's source checkpoint converted, evaluated, uptrained and evaluated again."""

    seed: int
    source_validation_loss: float  # the trained source before conversion
    validation_loss_before: float  # the converted model, before uptraining
    validation_loss_after: float  # after uptraining
    uptrain_steps: int
    uptrain_time_s: float
    uptrain_tokens: int


class Conversion(_Model):
    """A conversion of ``source``'s trained runs into ``target`` (mean-pooled K/V heads, dropped consumer K/V)."""

    source: str
    target: str  # as written in quality.convert_to
    spelling: str
    kv_bytes_per_token: int
    uptrain_fraction: float
    status: Literal["ok", "error", "unsupported"]
    error: str | None = None
    runs: list[ConversionRun] = []


class CorpusInfo(_Model):
    name: str
    sha256: str
    train_bytes: int
    validation_bytes: int


class QualityResult(_Model):
    """A whole quality result file."""

    quality_format: int = QUALITY_FORMAT
    target: str
    environment: dict[str, Any]
    git: GitInfo
    scenario: str  # the scenario's name
    scenario_source: str
    scenario_sha256: str
    model: dict[str, Any]  # the scenario's [model] table
    settings: dict[str, Any]  # the [quality] table as run (after --quick)
    device: Literal["cpu", "cuda"]
    threads: int | None  # CPU: torch threads the runs used
    quick: bool
    started_utc: str
    finished_utc: str | None = None
    corpus: CorpusInfo
    variants: list[VariantQuality] = []
    conversions: list[Conversion] = []


def claim_quality_path(folder: Path, started: datetime, short_commit: str | None) -> Path:
    """A new ``quality_20261124T061500Z_ab12cd3.json`` in ``folder``, claimed as a decode result's name is
    (a second run started in the same second gets ``-2``; neither overwrites the other)."""
    return claim_result_path(folder, started, short_commit, prefix=QUALITY_PREFIX)


def save_quality(result: QualityResult, path: Path) -> None:
    write_text_atomic(path, result.model_dump_json(indent=1) + "\n")


def load_quality(path: str | Path) -> QualityResult:
    """Read and validate a quality result; UserError naming the file and field on a bad one."""
    source = str(path)
    data = read_json(path, MAX_RESULT_BYTES, "quality result")
    if not isinstance(data, dict) or data.get("quality_format") != QUALITY_FORMAT:
        raise UserError(f"not a quality result of format {QUALITY_FORMAT}", source=source, field="quality_format")
    try:
        return QualityResult.model_validate(data)
    except ValidationError as exc:
        raise UserErrors(validation_problems(exc, source)) from None
