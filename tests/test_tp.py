"""Tensor parallelism: each rank a real process (gloo); a sharded decode step equals the unsharded one."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
import torch.distributed as dist
from helpers_requests import rank_request

from harness import accounting
from harness.cli import main
from harness.measure.protocol import RankRequest
from harness.measure.tp_rank import process_group
from harness.model import build_decoder
from harness.model.tp import shard_decoder
from harness.parallel import kv_heads_per_rank, kv_replication, rank_variant, tp_problem
from harness.run.ranks import run_ranks
from harness.run.worker import IsolatedRunner
from harness.scenario.schema import ModelSpec
from harness.variants import MLAShape, Variant, sharing_map

MODEL = ModelSpec(d_model=64, n_layers=4, d_ff=96, vocab_size=97, dtype="float32")
MHA = Variant(name="H16-MHA", head_dim=16, n_heads=4, n_kv_heads=4, kv_layers=(0, 1, 2, 3))
GQA2 = Variant(name="H16-GQA2", head_dim=16, n_heads=4, n_kv_heads=2, kv_layers=(0, 1, 2, 3))
MQA_CLA2 = Variant(name="H16-MQA-CLA2", head_dim=16, n_heads=4, n_kv_heads=1, kv_layers=sharing_map(4, 2))
GQA2_CLA2 = Variant(name="H16-GQA2-CLA2", head_dim=16, n_heads=4, n_kv_heads=2, kv_layers=sharing_map(4, 2))
MLA = Variant(
    name="MLA32-R8",
    head_dim=24,
    n_heads=4,
    n_kv_heads=1,
    kv_layers=(0, 1, 2, 3),
    mla=MLAShape(kv_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16),
)
PROMPT_LEN = 8
TP_SCENARIO = """
name = "tp"
[model]
d_model = 64
n_layers = 4
d_ff = 96
vocab_size = 97
dtype = "float32"
[[variant]]
name = "H16-MQA"
[[variant]]
name = "H16-MHA-CLA2"
[sweep]
batch_size = [1]
context_len = [8]
tp = [1, 2, 4]
"""


def prompt() -> tuple[torch.Tensor, torch.Tensor]:
    """A prompt [2, PROMPT_LEN] and the next token of each sequence [2, 1]."""
    drawn = torch.randint(0, MODEL.vocab_size, (2, PROMPT_LEN + 1), generator=torch.Generator().manual_seed(7))
    return drawn[:, :PROMPT_LEN], drawn[:, PROMPT_LEN:]


def sharded_step(request: RankRequest) -> dict[str, Any]:
    """One rank: prefill the prompt with its shard, decode the next token; the logits and the rank's cache bytes."""
    variant = request.variant
    tokens, following = prompt()
    with process_group(request) as group, torch.inference_mode():
        decoder = shard_decoder(
            MODEL, variant, tp=request.tp, rank=request.rank, group=group, dtype="float32", device="cpu", seed=3
        )
        cache = decoder.allocate_cache(2, PROMPT_LEN + 1)
        decoder.prefill(tokens, cache)
        logits = decoder.decode_step(following, cache, PROMPT_LEN)
    return {"logits": logits.tolist(), "kv_cache_bytes": cache.nbytes}


def unsharded_logits(variant: Variant) -> torch.Tensor:
    decoder = build_decoder(MODEL, variant, dtype="float32", device="cpu", seed=3)
    tokens, following = prompt()
    cache = decoder.allocate_cache(2, PROMPT_LEN + 1)
    decoder.prefill(tokens, cache)
    return decoder.decode_step(following, cache, PROMPT_LEN)


@pytest.fixture(scope="module")
def workers() -> IsolatedRunner:
    return IsolatedRunner()


@pytest.mark.parametrize(
    ("variant", "tp"),
    [(MHA, 2), (MHA, 4), (GQA2, 4), (MQA_CLA2, 2), (GQA2_CLA2, 2), (MLA, 2)],
    ids=["mha-tp2", "mha-tp4", "gqa2-tp4-replicated", "mqa-cla2-tp2-replicated", "gqa2-cla2-tp2", "mla-tp2"],
)
def test_a_sharded_decode_step_gives_every_rank_the_unsharded_logits(
    workers: IsolatedRunner, variant: Variant, tp: int
):
    payload = rank_request(tp, model=MODEL, variant=variant)
    outcomes = run_ranks(workers, sharded_step, [payload] * tp, timeout_s=120)
    assert [o.status for o in outcomes] == ["ok"] * tp, [o.error for o in outcomes]
    expected = unsharded_logits(variant)
    for outcome in outcomes:
        assert outcome.value is not None
        torch.testing.assert_close(torch.tensor(outcome.value["logits"]), expected, atol=1e-5, rtol=1e-5)
        local = rank_variant(variant, tp)
        assert outcome.value["kv_cache_bytes"] == accounting.kv_cache_bytes(local, "float32", 2, PROMPT_LEN)


def test_kv_heads_split_over_ranks_until_there_are_fewer_than_ranks_then_replicate():
    assert [kv_heads_per_rank(GQA2, tp) for tp in (1, 2, 4)] == [2, 1, 1]
    assert [kv_replication(GQA2, tp) for tp in (1, 2, 4)] == [1.0, 1.0, 2.0]
    assert [kv_replication(MQA_CLA2, tp) for tp in (1, 2, 4)] == [1.0, 2.0, 4.0]
    # per rank, CLA2 halves the cache at every degree: 2 producers instead of 4
    for tp in (1, 2, 4):
        base = accounting.kv_bytes_per_token(rank_variant(GQA2, tp), "float32")
        assert base == 2 * accounting.kv_bytes_per_token(rank_variant(GQA2_CLA2, tp), "float32")


def test_a_layout_that_does_not_split_evenly_says_why():
    gqa3 = Variant(name="H16-GQA3", head_dim=16, n_heads=6, n_kv_heads=3, kv_layers=(0, 1, 2, 3))
    model = MODEL.model_copy(update={"d_ff": 96})
    assert tp_problem(model, gqa3, 2) == (
        "its 3 KV heads neither split over 2 ranks nor replicate evenly "
        "(tp must divide n_kv_heads or be a multiple of it)"
    )
    assert tp_problem(model, MHA, 8) == "its 4 query heads do not split evenly over 8 ranks"
    assert tp_problem(model.model_copy(update={"d_ff": 90}), MHA, 4) == "d_ff (90) does not split evenly over 4 ranks"
    assert tp_problem(model, GQA2, 4) is None


def fail_on_rank_one(request: RankRequest) -> dict[str, Any]:
    """Rank 1 fails at once; the others wait for it in a barrier that never completes."""
    with process_group(request) as group:
        if request.rank == 1:
            raise ValueError("rank 1 cannot build its shard")
        dist.barrier(group=group)
    return {}


def sleep_forever(request: RankRequest) -> dict[str, Any]:
    time.sleep(3600)
    return {}


def test_one_failing_rank_ends_the_whole_group_at_once_and_leaves_no_process(workers: IsolatedRunner):
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    start = time.perf_counter()
    outcomes = run_ranks(workers, fail_on_rank_one, [rank_request(3)] * 3, timeout_s=300)
    assert time.perf_counter() - start < 60  # not the 300 s limit, nor gloo's own timeout
    assert [o.status for o in outcomes] == ["error", "error", "error"]
    assert outcomes[1].error is not None and outcomes[1].error.startswith("ValueError: rank 1 cannot build its shard")
    assert outcomes[0].error == "rank 0 was ended: rank 1 ended with error"
    after = {child.pid for child in psutil.Process().children(recursive=True) if child.is_running()}
    assert after <= before


def test_a_group_that_does_not_answer_in_time_is_killed_whole(workers: IsolatedRunner):
    outcomes = run_ranks(workers, sleep_forever, [rank_request(2)] * 2, timeout_s=2)
    assert [o.status for o in outcomes] == ["timeout", "timeout"]
    assert outcomes[0].error is not None and "no answer within 2 s" in outcomes[0].error


def test_plan_shows_each_ranks_kv_bytes_and_replication_per_degree(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = tmp_path / "tp.toml"
    path.write_text(TP_SCENARIO)
    assert main(["plan", str(path), "--json"]) == 0
    layouts = {v["name"]: v["tp"] for v in json.loads(capsys.readouterr().out)["variants"]}
    assert [(t["tp"], t["kv_heads_per_rank"], t["kv_replication"]) for t in layouts["H16-MQA"]] == [
        (1, 1, 1.0),
        (2, 1, 2.0),
        (4, 1, 4.0),
    ]
    # 2 producers · 2 · 4/tp K/V heads · 16 wide · 4 bytes on each rank
    assert [t["kv_bytes_per_token_per_rank"] for t in layouts["H16-MHA-CLA2"]] == [1024, 512, 256]
