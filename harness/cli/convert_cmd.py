"""``attnbench convert CHECKPOINT --to VARIANT``: turn a trained checkpoint in the decoder's own format into
other variants (K/V heads mean-pooled within groups, consumers' K/V dropped), and measure the validation loss
before and after a short uptraining on the corpus of a scenario's ``[quality]`` table (default: its defaults)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tabulate import tabulate

from harness.errors import UserError
from harness.hardware import resolve_device
from harness.results.store import check_writable
from harness.scenario import load_scenario
from harness.scenario.load import resolve_spelling
from harness.scenario.quality import QualitySpec, conversion_problem
from harness.train.checkpoint import load_checkpoint, restore, save_checkpoint
from harness.train.corpus import load_corpus
from harness.train.run import convert_seed, uptrain_steps


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("convert", help="convert a trained checkpoint into other variants", description=__doc__)
    parser.add_argument("checkpoint", help="a checkpoint written by attnbench (harness/train/checkpoint.py)")
    parser.add_argument(
        "--to", action="append", required=True, metavar="VARIANT", help="a spelling such as H16-GQA2 (repeatable)"
    )
    parser.add_argument("--scenario", default=None, help="scenario whose [quality] table sets corpus and training")
    parser.add_argument(
        "--uptrain-steps",
        type=int,
        default=None,
        help="uptraining steps (default: quality.uptrain_fraction of the steps the checkpoint was trained for)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the uptraining's batch order")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    parser.add_argument("--save", type=Path, default=None, help="folder to write each uptrained checkpoint into")
    parser.set_defaults(func=run)


def _quality(args: argparse.Namespace) -> tuple[QualitySpec, Path, str]:
    """The [quality] settings of ``--scenario``, else the defaults; with the folder a corpus_file is relative to."""
    if args.scenario is None:
        return QualitySpec(), Path("."), "[quality] defaults"
    loaded = load_scenario(args.scenario)
    return loaded.scenario.quality or QualitySpec(), Path(args.scenario).parent, args.scenario


def _steps(args: argparse.Namespace, quality: QualitySpec, trained_steps: int | None) -> int:
    if args.uptrain_steps is not None:
        if args.uptrain_steps < 1:
            raise UserError(f"must be at least 1, got {args.uptrain_steps}", field="--uptrain-steps")
        return int(args.uptrain_steps)
    if trained_steps is None:
        raise UserError(
            "the checkpoint does not say how many steps trained it; give --uptrain-steps", source=args.checkpoint
        )
    return uptrain_steps(quality.uptrain_fraction, trained_steps)


def run(args: argparse.Namespace) -> int:
    checkpoint = load_checkpoint(args.checkpoint)
    quality, base, source = _quality(args)
    steps = _steps(args, quality, checkpoint.trained_steps)
    targets = [resolve_spelling(name, checkpoint.model, "--to", name) for name in args.to]
    for name, target in zip(args.to, targets, strict=True):
        problem = conversion_problem(checkpoint.variant, target)
        if problem is not None:
            raise UserError(
                f"{checkpoint.variant.describe()} -> {name}: {problem}", source=args.checkpoint, field="--to"
            )
    if args.save is not None:  # before uptraining, not after it
        check_writable(args.save, 0)
    corpus = load_corpus(quality, base, source)
    device = resolve_device(args.device)
    trained = restore(checkpoint, quality.dtype, device, args.checkpoint)
    rows = []
    for name, target in zip(args.to, targets, strict=True):
        result, uptrained = convert_seed(trained, target, corpus, quality, args.seed, steps)
        rows.append(
            [
                f"{checkpoint.variant.describe()} → {name}",
                f"{result.source_validation_loss:.4f}",
                f"{result.validation_loss_before:.4f}",
                f"{result.validation_loss_after:.4f}",
                str(result.uptrain_steps),
                f"{result.uptrain_time_s:.1f}",
            ]
        )
        if args.save is not None:
            total = None if checkpoint.trained_steps is None else checkpoint.trained_steps + steps
            save_checkpoint(uptrained, total, args.save / f"{name}.pt")
    headers = ["conversion", "source loss", "converted", "after uptraining", "steps", "uptrain s"]
    print(tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True))
    return 0
