"""Training and evaluating a decoder on a byte corpus: plain functions, deterministic for a seed.

One optimizer step: a batch of windows drawn by a generator seeded from the run's seed, the mean
next-byte cross-entropy (harness/model/training.py, the decoder's own layers with autograd), AdamW
(Loshchilov & Hutter 2019) with weight decay on matrices only, the global gradient norm clipped, and a
learning rate that rises linearly over the warm-up then follows a cosine down to ``min_lr_fraction`` of
the peak (Loshchilov & Hutter 2017, SGDR; the schedule of Brown et al. 2020, appendix B). Nothing else
draws random numbers, so a seed fixes the run on one machine and thread count.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from harness.model.decoder import Decoder
from harness.model.training import next_token_loss
from harness.scenario.quality import QualitySpec
from harness.train.corpus import Corpus, training_batch, validation_windows

BETAS = (0.9, 0.95)  # Brown et al. 2020, appendix B
BATCH_SEED_OFFSET = 1_000_003  # batch order and weights draw from different streams of one seed


def learning_rate(step: int, steps: int, warmup_steps: int, peak: float, min_fraction: float) -> float:
    """The rate of 0-based ``step``: linear warm-up to ``peak`` over ``warmup_steps``, then cosine decay to
    ``min_fraction · peak`` at the last step."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    span = max(1, steps - warmup_steps - 1)
    progress = min(1.0, (step - warmup_steps) / span)
    return peak * (min_fraction + (1 - min_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class TrainLog:
    """What one training run did: its steps, time, tokens and the loss every ``log_every`` steps."""

    steps: int
    train_time_s: float
    tokens_seen: int
    train_loss: list[tuple[int, float]] = field(default_factory=list)  # (step, loss in nats), 1-based steps


def _optimizer(decoder: Decoder, quality: QualitySpec) -> torch.optim.AdamW:
    matrices = [p for p in decoder.parameters() if p.dim() >= 2]
    vectors = [p for p in decoder.parameters() if p.dim() < 2]
    groups = [{"params": matrices, "weight_decay": quality.weight_decay}, {"params": vectors, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=quality.learning_rate, betas=BETAS, foreach=False)


def train(
    decoder: Decoder,
    corpus: Corpus,
    quality: QualitySpec,
    seed: int,
    steps: int,
    warmup_steps: int,
    peak_lr: float | None = None,
    min_lr_fraction: float | None = None,
) -> TrainLog:
    """Train ``decoder`` in place for ``steps`` optimizer steps on ``corpus.train``; batches drawn from ``seed``.
    The schedule's peak and floor default to the [quality] table's."""
    peak = quality.learning_rate if peak_lr is None else peak_lr
    floor = quality.min_lr_fraction if min_lr_fraction is None else min_lr_fraction
    generator = torch.Generator().manual_seed(seed + BATCH_SEED_OFFSET)
    optimizer = _optimizer(decoder, quality)
    log = TrainLog(steps=steps, train_time_s=0.0, tokens_seen=0)
    decoder.train()
    start = time.perf_counter()
    for step in range(steps):
        rate = learning_rate(step, steps, warmup_steps, peak, floor)
        for group in optimizer.param_groups:
            group["lr"] = rate
        batch = training_batch(corpus.train, quality.batch_size, quality.seq_len, generator).to(decoder.device)
        loss = next_token_loss(decoder, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder.parameters(), quality.grad_clip, foreach=False)
        optimizer.step()
        log.tokens_seen += quality.batch_size * quality.seq_len
        if (step + 1) % quality.log_every == 0 or step + 1 == steps:
            log.train_loss.append((step + 1, float(loss.item())))
    if decoder.device.type == "cuda":
        torch.cuda.synchronize(decoder.device)
    log.train_time_s = time.perf_counter() - start
    decoder.eval()
    return log


@torch.no_grad()
def validation_loss(decoder: Decoder, corpus: Corpus, quality: QualitySpec) -> tuple[float, int]:
    """Mean next-byte cross-entropy (nats) over the validation windows, and how many bytes it predicted."""
    windows = validation_windows(corpus.validation, quality.seq_len, quality.eval_tokens)
    was_training = decoder.training
    decoder.eval()
    total = 0.0
    for batch in windows.split(quality.batch_size):
        total += float(next_token_loss(decoder, batch.to(decoder.device)).item()) * batch.shape[0]
    decoder.train(was_training)
    return total / windows.shape[0], windows.shape[0] * quality.seq_len
