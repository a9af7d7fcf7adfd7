"""The ``[quality]`` table of a scenario: training every variant from scratch on a byte-level corpus, several
seeds each, and converting a trained checkpoint into other variants (``attnbench train``).

Defaults follow common small-model practice (AdamW with β = (0.9, 0.95) and weight decay 0.1, linear
warm-up then cosine decay, gradient clipping at 1.0: Brown et al. 2020, "Language Models are Few-Shot
Learners", appendix B). The conversion's uptraining fraction defaults to the GQA paper's α = 0.05 of
the original steps (Ainslie et al. 2023, §2.2).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.variants import Variant

BUILTIN_CORPORA = ("pydoc-topics",)
BYTE_VOCAB = 256  # one token per byte value
# Scenario files are untrusted input: every number is bounded (as in harness/scenario/schema.py), so that
# a mistyped ``steps = 1e18`` is refused instead of training forever.
MAX_STEPS = 10**7
Steps = Annotated[int, Field(gt=0, le=MAX_STEPS)]
Tokens = Annotated[int, Field(gt=0, le=2**40)]  # bytes of a corpus or of a validation split
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]


class QualitySpec(BaseModel):
    """Training at toy scale: what data, how long, how many seeds, and which conversions."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    corpus: str | None = Field(
        None,
        description="built-in corpus: 'pydoc-topics' (CPython's pydoc_data.topics, the reference manual's topics "
        "help() shows; the default when no corpus_file is given)",
    )
    corpus_file: str | None = Field(None, description="a local file to train on instead, relative to the scenario")
    corpus_bytes: Tokens | None = Field(None, description="use only the first this many bytes of the corpus")
    validation_fraction: float = Field(
        0.1, gt=0, lt=0.5, description="the corpus's last fraction of bytes is the validation split, never trained on"
    )
    dtype: str = Field("float32", pattern="^(float32|bfloat16)$", description="training dtype of weights and math")
    seq_len: int = Field(128, gt=0, le=2**20, description="training context in bytes (tokens)")
    batch_size: int = Field(16, gt=0, le=2**16, description="sequences per training step")
    steps: Steps = Field(300, description="optimizer steps per run")
    learning_rate: float = Field(3e-3, gt=0, le=10, description="peak learning rate")
    warmup_steps: int = Field(30, ge=0, le=MAX_STEPS, description="linear warm-up steps, then cosine decay")
    min_lr_fraction: float = Field(0.1, ge=0, le=1, description="cosine decays to this fraction of the peak")
    weight_decay: float = Field(0.1, ge=0, le=10, description="AdamW weight decay (matrices only)")
    grad_clip: float = Field(1.0, gt=0, le=1e6, description="clip the global gradient norm to this")
    seeds: list[Seed] = Field(
        [0, 1, 2], min_length=1, max_length=1000, description="one run per seed: weights and batch order"
    )
    eval_tokens: Tokens | None = Field(
        None, description="predict at most this many validation bytes (default: the whole validation split)"
    )
    log_every: Steps = Field(10, description="record the training loss every this many steps")
    quick_steps: Steps = Field(20, description="steps per run with --quick")
    quick_seeds: int = Field(2, ge=1, le=1000, description="seeds used with --quick (the first ones)")
    quick_eval_tokens: Tokens = Field(16384, description="validation bytes with --quick")
    convert_from: str | None = Field(None, description="a variant of this scenario whose trained runs are converted")
    convert_to: list[str] = Field([], max_length=1000, description="variants (by name or spelling) to convert it into")
    uptrain_fraction: float = Field(
        0.05, gt=0, le=1, description="uptraining after a conversion: this fraction of the original steps"
    )

    @model_validator(mode="after")
    def _consistent(self) -> QualitySpec:
        if self.corpus is not None and self.corpus_file is not None:
            raise ValueError("give corpus or corpus_file, not both")
        if self.corpus is not None and self.corpus not in BUILTIN_CORPORA:
            raise ValueError(f"unknown corpus {self.corpus!r}; built in: {', '.join(BUILTIN_CORPORA)}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"quality.seeds repeats a value: {self.seeds}")
        if self.convert_to and self.convert_from is None:
            raise ValueError("convert_to needs convert_from, the variant whose checkpoints are converted")
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be fewer than steps ({self.steps})")
        return self

    def for_run(self, quick: bool) -> QualitySpec:
        """The settings a run uses: with ``quick``, fewer steps, seeds and validation bytes."""
        if not quick:
            return self
        steps = min(self.steps, self.quick_steps)
        return self.model_copy(
            update={
                "steps": steps,
                "warmup_steps": min(self.warmup_steps, steps // 4),
                "seeds": self.seeds[: self.quick_seeds],
                "eval_tokens": min(self.eval_tokens or self.quick_eval_tokens, self.quick_eval_tokens),
                "log_every": min(self.log_every, max(1, steps // 4)),
            }
        )


def conversion_problem(source: Variant, target: Variant) -> str | None:
    """Why a trained ``source`` cannot be converted into ``target`` (harness/model/convert.py), or None: K/V heads
    pool within equal groups, CLA keeps only producers the source has, everything else stays as it is."""
    if source.mla is not None or target.mla is not None:
        return "MLA has no K/V heads to pool"
    if source.layer_windows or target.layer_windows or source.kv_dtype or target.kv_dtype:
        return "a conversion keeps the cache layout: windows and 8-bit caches are not converted"
    if (target.head_dim, target.n_heads) != (source.head_dim, source.n_heads):
        return (
            f"head_dim and n_heads must stay {source.head_dim} and {source.n_heads} "
            f"(the target has {target.head_dim} and {target.n_heads})"
        )
    if len(target.kv_layers) != len(source.kv_layers):
        return f"the target has {len(target.kv_layers)} layers, the source {len(source.kv_layers)}"
    if source.n_kv_heads % target.n_kv_heads:
        return f"{source.n_kv_heads} K/V heads do not pool into {target.n_kv_heads} groups of equal size"
    lost = [layer for layer in target.producers if layer not in source.producers]
    if lost:
        return f"layers {lost} would produce K/V but have no K/V projection in the source"
    return None
