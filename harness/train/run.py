"""A quality run (``attnbench train``): every variant of a scenario trained from scratch over its seeds, then the
conversions of ``quality.convert_from``'s trained runs, into one result file under ``results/<target>/``.

The file is written atomically after every variant and conversion, so an interrupted run keeps what finished.
Runs happen in this process, one after another: training has no timing window to protect, and one process
keeps a seed's run bit for bit the same (harness/train/loop.py).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch

from harness import accounting
from harness.backend_support import training_problem
from harness.errors import UserError
from harness.hardware import detect_target, fingerprint, is_cuda, resolve_device
from harness.model import build_decoder
from harness.model.decoder import Decoder
from harness.model.training import TRAIN_BACKEND
from harness.results.quality import (
    Conversion,
    ConversionRun,
    CorpusInfo,
    QualityResult,
    SeedRun,
    VariantQuality,
    claim_quality_path,
    save_quality,
)
from harness.results.store import check_writable
from harness.run.runfiles import git_info
from harness.scenario import LoadedScenario
from harness.scenario.load import conversion_targets
from harness.scenario.quality import QualitySpec
from harness.train.checkpoint import save_checkpoint
from harness.train.conversion import convert
from harness.train.corpus import Corpus, load_corpus
from harness.train.loop import train, validation_loss
from harness.variants import Variant

UPTRAIN_SEED_OFFSET = 7_919  # uptraining draws other batches than the run it continues


@dataclass(frozen=True)
class QualityOptions:
    device: str = "auto"
    out_dir: Path = Path("results")
    quick: bool = False
    threads: int | None = None  # CPU: torch threads; None keeps torch's default
    checkpoints_dir: Path | None = None  # where to write every trained run's checkpoint; None: nowhere


Progress = Callable[[str], None]  # one line per finished run


def uptrain_steps(fraction: float, trained_steps: int) -> int:
    """Steps of uptraining after a conversion: ``fraction`` of the original steps, rounded up, at least one."""
    return max(1, math.ceil(round(fraction * trained_steps, 9)))


def _warmup_for(steps: int, quality: QualitySpec) -> int:
    """The original warm-up's share of ``steps`` (fewer than ``steps``)."""
    return min(steps - 1, round(steps * quality.warmup_steps / quality.steps))


def _shape(variant: Variant, quality: QualitySpec, loaded: LoadedScenario) -> dict[str, object]:
    return {
        "spelling": variant.describe(),
        "head_dim": variant.head_dim,
        "n_heads": variant.n_heads,
        "n_kv_heads": variant.n_kv_heads,
        "n_kv_layers": variant.n_kv_layers,
        "kv_bytes_per_token": accounting.kv_bytes_per_token(variant, quality.dtype),
        "params_total": accounting.param_counts(loaded.scenario.model, variant).total,
    }


def train_seed(
    loaded: LoadedScenario, variant: Variant, corpus: Corpus, quality: QualitySpec, seed: int, device: str
) -> tuple[SeedRun, Decoder]:
    """``variant`` trained from scratch with ``seed`` (weights and batch order) and its validation loss."""
    decoder = build_decoder(
        loaded.scenario.model, variant, dtype=quality.dtype, device=device, backend=TRAIN_BACKEND, seed=seed
    )
    log = train(decoder, corpus, quality, seed, quality.steps, quality.warmup_steps)
    loss, predicted = validation_loss(decoder, corpus, quality)
    run = SeedRun(
        seed=seed,
        validation_loss=loss,
        validation_perplexity=math.exp(loss),
        validation_tokens=predicted,
        train_time_s=log.train_time_s,
        tokens_seen=log.tokens_seen,
        steps=log.steps,
        train_loss=log.train_loss,
    )
    return run, decoder


def convert_seed(
    trained: Decoder, target: Variant, corpus: Corpus, quality: QualitySpec, seed: int, steps: int
) -> tuple[ConversionRun, Decoder]:
    """``trained`` (left as it is) converted into ``target``, evaluated, uptrained for ``steps``, evaluated again;
    the numbers and the uptrained decoder."""
    source_loss, _ = validation_loss(trained, corpus, quality)
    converted = convert(copy.deepcopy(trained), target)
    before, _ = validation_loss(converted, corpus, quality)
    # Uptraining continues where the original schedule ended: at its final rate, held constant after the
    # original warm-up's share of the steps (a fresh optimizer's first steps are its largest).
    final_lr = quality.learning_rate * quality.min_lr_fraction
    warmup = _warmup_for(steps, quality)
    log = train(converted, corpus, quality, seed + UPTRAIN_SEED_OFFSET, steps, warmup, final_lr, 1.0)
    after, _ = validation_loss(converted, corpus, quality)
    run = ConversionRun(
        seed=seed,
        source_validation_loss=source_loss,
        validation_loss_before=before,
        validation_loss_after=after,
        uptrain_steps=steps,
        uptrain_time_s=log.train_time_s,
        uptrain_tokens=log.tokens_seen,
    )
    return run, converted


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_quality(loaded: LoadedScenario, options: QualityOptions, progress: Progress) -> tuple[Path, QualityResult]:
    """Train, convert and save; UserError for a scenario without [quality] or an unreadable corpus."""
    scenario = loaded.scenario
    if scenario.quality is None:
        raise UserError("has no [quality] table; attnbench train needs one (docs/scenarios.md)", source=loaded.source)
    quality = scenario.quality.for_run(options.quick)
    corpus = load_corpus(quality, Path(loaded.source).parent, loaded.source)
    device = resolve_device(options.device)
    if options.threads is not None and not is_cuda(device):
        torch.set_num_threads(options.threads)
    target = detect_target(device)
    # where the result, its report and the checkpoints go can take files: checked before training for minutes
    check_writable(options.out_dir / target, 0)
    if options.checkpoints_dir is not None:
        check_writable(options.checkpoints_dir, 0)
    started = datetime.now(UTC)
    git = git_info()
    path = claim_quality_path(options.out_dir / target, started, git.short)
    result = QualityResult(
        target=target,
        environment=fingerprint(device),
        git=git,
        scenario=scenario.name,
        scenario_source=loaded.source,
        scenario_sha256=loaded.content_sha256,
        model=scenario.model.model_dump(),
        settings=quality.model_dump(),
        device="cuda" if is_cuda(device) else "cpu",
        threads=None if is_cuda(device) else torch.get_num_threads(),
        quick=options.quick,
        started_utc=started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        corpus=CorpusInfo(
            name=corpus.name,
            sha256=corpus.sha256,
            train_bytes=int(corpus.train.numel()),
            validation_bytes=int(corpus.validation.numel()),
        ),
    )
    save_quality(result, path)
    sources: dict[int, Decoder] = {}
    for variant in loaded.variants:
        entry = VariantQuality(variant=variant.name, status="ok", **_shape(variant, quality, loaded))
        problem = training_problem(variant)
        if problem is not None:
            entry = entry.model_copy(update={"status": "unsupported", "error": problem})
        else:
            for seed in quality.seeds:
                run, decoder = train_seed(loaded, variant, corpus, quality, seed, device)
                entry.runs.append(run)
                if variant.name == quality.convert_from:
                    sources[seed] = decoder
                if options.checkpoints_dir is not None:
                    save_checkpoint(decoder, run.steps, options.checkpoints_dir / f"{variant.name}-seed{seed}.pt")
                progress(
                    f"{variant.name} seed {seed}: validation loss {run.validation_loss:.4f} "
                    f"(perplexity {run.validation_perplexity:.3f}) in {run.train_time_s:.1f} s"
                )
        result.variants.append(entry)
        save_quality(result, path)
    for name, target_variant in zip(
        scenario.quality.convert_to, conversion_targets(scenario, loaded.variants, loaded.source), strict=True
    ):
        conversion = Conversion(
            source=quality.convert_from or "",
            target=name,
            spelling=target_variant.describe(),
            kv_bytes_per_token=accounting.kv_bytes_per_token(target_variant, quality.dtype),
            uptrain_fraction=quality.uptrain_fraction,
            status="ok",
        )
        if not sources:
            conversion.status, conversion.error = "unsupported", f"{conversion.source} has no trained run to convert"
        for seed, trained in sources.items():
            run_, _ = convert_seed(
                trained, target_variant, corpus, quality, seed, uptrain_steps(quality.uptrain_fraction, quality.steps)
            )
            conversion.runs.append(run_)
            progress(
                f"{conversion.source} -> {name} seed {seed}: validation loss {run_.validation_loss_before:.4f} "
                f"converted, {run_.validation_loss_after:.4f} after {run_.uptrain_steps} steps"
            )
        result.conversions.append(conversion)
        save_quality(result, path)
    result.finished_utc = _now()
    save_quality(result, path)
    return path, result
