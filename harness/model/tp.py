"""One rank's shard of a decoder stack under tensor parallelism (Shoeybi et al. 2019, "Megatron-LM", §3).

A rank holds the query heads ``rank · n_heads/tp ..`` of every layer with their rows of the query
projection and columns of the output projection, the K/V heads those queries read (split, or
replicated when n_kv_heads < tp: harness/parallel.py), ``d_ff / tp`` columns of the SwiGLU gate and up
projections with the matching rows of the down projection, and the embedding, norms and LM head
whole. The output and down projections are row-parallel: each rank multiplies its slice and an
all-reduce sums the partial results, the two collectives per layer of Megatron's layout. CLA composes
unchanged: a consumer holds no K/V projection on any rank and reads its producer's slot, which on
every rank holds that rank's K/V heads.

The shard is an ordinary :class:`~harness.model.decoder.Decoder` of the rank's layout (harness.parallel.
rank_variant, rank_model) whose two row-parallel projections per layer are :class:`AllReduceLinear`, so
its single-process code runs unchanged. Its weights are the slices of the weights
:func:`harness.model.build_decoder` draws from the same seed, drawn one tensor at a time (never the
whole unsharded model at once), so a sharded step reproduces the unsharded one.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from harness.model import TORCH_DTYPES
from harness.model.decoder import Block, Decoder
from harness.model.layers import RMSNorm
from harness.parallel import first_kv_head, kv_heads_per_rank, rank_model, rank_variant
from harness.scenario.schema import ModelSpec
from harness.variants import Variant

# Parameter names (after "layers.<i>.") sliced by query head: rows of a head-major projection.
QUERY_ROWS = ("attention.wq.weight", "attention.wq_b.weight", "attention.wkv_b.weight")
KV_ROWS = ("attention.wk.weight", "attention.wv.weight")  # rows by K/V head
MLP_ROWS = ("feed_forward.w1.weight", "feed_forward.w3.weight")  # rows by d_ff column
# Row-parallel projections: columns sliced (by query head, by d_ff column), outputs summed over ranks.
HEAD_COLUMNS = "attention.wo.weight"
MLP_COLUMNS = "feed_forward.w2.weight"


class AllReduceLinear(nn.Linear):
    """A row-parallel projection: this rank's slice of the input features, the outputs of all ranks summed."""

    def __init__(self, in_features: int, out_features: int, group: dist.ProcessGroup) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.group = group

    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(x)
        dist.all_reduce(out, group=self.group)
        return out


def _rows(weight: Tensor, parts: int, first: int, count: int) -> Tensor:
    """Rows of ``count`` consecutive parts from ``first`` of a weight [parts*width, in] split into ``parts``."""
    return weight.view(parts, -1, weight.shape[1])[first : first + count].flatten(0, 1)  # [count*width, in]


def _columns(weight: Tensor, parts: int, first: int, count: int) -> Tensor:
    """Columns of ``count`` consecutive parts from ``first`` of a weight [out, parts*width]."""
    return weight.view(weight.shape[0], parts, -1)[:, first : first + count].flatten(1, 2)  # [out, count*width]


def shard_weight(name: str, weight: Tensor, model: ModelSpec, variant: Variant, tp: int, rank: int) -> Tensor:
    """Rank ``rank``'s part of the unsharded parameter ``name`` (a view; replicated parameters whole)."""
    local_heads = variant.n_heads // tp
    local_ff = model.d_ff // tp
    suffix = name.split(".", 2)[-1] if name.startswith("layers.") else name
    if suffix in QUERY_ROWS:
        return _rows(weight, variant.n_heads, rank * local_heads, local_heads)
    if suffix in KV_ROWS:
        return _rows(weight, variant.n_kv_heads, first_kv_head(variant, tp, rank), kv_heads_per_rank(variant, tp))
    if suffix == HEAD_COLUMNS:
        return _columns(weight, variant.n_heads, rank * local_heads, local_heads)
    if suffix in MLP_ROWS:
        return _rows(weight, model.d_ff, rank * local_ff, local_ff)
    if suffix == MLP_COLUMNS:
        return _columns(weight, model.d_ff, rank * local_ff, local_ff)
    return weight


def shard_decoder(
    model: ModelSpec,
    variant: Variant,
    *,
    tp: int,
    rank: int,
    group: dist.ProcessGroup | None,
    dtype: str,
    device: str | torch.device,
    backend: str = "eager",
    seed: int = 0,
) -> Decoder:
    """Rank ``rank`` of ``tp``: a decoder of the rank's layout holding its slices of the weights
    :func:`harness.model.build_decoder` draws from ``seed``. ``group`` (None only for tp 1) sums the
    row-parallel projections' outputs."""
    device = torch.device(device)
    torch_dtype = TORCH_DTYPES[dtype]
    with torch.device("meta"):
        local = Decoder(rank_model(model, tp), rank_variant(variant, tp), backend=backend)
        full = Decoder(model, variant)
        if tp > 1:
            assert group is not None, "a rank of several needs the process group its projections sum over"
            for block in local.layers:
                assert isinstance(block, Block)
                attention, feed_forward = block.attention, block.feed_forward
                attention.wo = AllReduceLinear(attention.wo.in_features, attention.wo.out_features, group)
                feed_forward.w2 = AllReduceLinear(feed_forward.w2.in_features, feed_forward.w2.out_features, group)
    local = local.to(dtype=torch_dtype).to_empty(device=device)
    params = dict(local.named_parameters())
    names = {id(module): name for name, module in full.named_modules()}
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for module in full.modules():  # Decoder.init_weights' order, so the generator draws the same numbers
            name = names[id(module)]
            if isinstance(module, nn.Linear | nn.Embedding):
                drawn = torch.empty(module.weight.shape, dtype=torch_dtype, device=device)
                drawn.normal_(0.0, 0.02, generator=generator)
                params[f"{name}.weight"].copy_(shard_weight(f"{name}.weight", drawn, model, variant, tp, rank))
            elif isinstance(module, RMSNorm):
                params[f"{name}.weight"].fill_(1.0)
    return local.eval()
