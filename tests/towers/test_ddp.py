"""DDP trains what one process trains on the global batch: two gloo processes, one training step
of `TwoTowerModule.step_loss` under torch's DistributedDataParallel, against one process over
the two ranks' batches put together. The loss (the ranks' mean) and every parameter's gradient
must agree to 1e-5, for each configuration below; with the gather switched off (what plain DDP
gives: each rank's own items as in-batch negatives) they must not."""

from __future__ import annotations

import socket
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import towers.module as module_file
from features.datamodule import EpochShuffle, TooFewForRanksError, _EpochBatches, _loader
from features.ranks import RanksDifferError, check_same_on_every_rank
from tests.towers.test_module import SPEC, batch, catalogue
from towers import (
    CosineContrastiveLoss,
    NegativeConfig,
    OptimConfig,
    SampledSoftmaxLoss,
    TowerConfig,
    TwoTowerModule,
)

NUM_RANKS = 2
# The global batch: repeated items within and across the ranks' halves (accidental hits), and
# 16 extra negatives over 10 items (extra negatives that hit positives).
USERS = [0, 1, 2, 3, 4, 5, 0, 1]
ITEMS = [3, 7, 3, 1, 9, 3, 0, 7]
USER_IDS = [0, 1, -1, 3, 4, 5, 0, 1]  # an unknown user: fewer id rows on rank 0 (the L2 penalty)


def _softmax() -> TwoTowerModule:
    """The shipped loss (logQ, in-batch + uniform extra negatives), sparse id tables (RowAdam in
    one process, dense under DDP), both id dropouts (drawn for the global batch)."""
    towers = TowerConfig(embedding_dim=8, sparse=True, user_id_dropout=0.3, item_id_dropout=0.3)
    return TwoTowerModule(
        SPEC, catalogue(), towers, SampledSoftmaxLoss(), NegativeConfig(num_negatives=16)
    )


def _contrastive_matryoshka() -> TwoTowerModule:
    """SimpleX's cosine contrastive loss on two Matryoshka prefixes, popularity negatives."""
    return TwoTowerModule(
        SPEC,
        catalogue(),
        TowerConfig(embedding_dim=8),
        CosineContrastiveLoss(margin=0.1, negative_weight=5.0),
        NegativeConfig(num_negatives=16, distribution="popularity"),
        matryoshka=[2, 4],
    )


def _extra_negatives_only() -> TwoTowerModule:
    """No in-batch negatives (nothing gathered: logQ at the global batch size), popularity
    negatives, the L2 penalty on the touched id rows (its count summed over ranks)."""
    return TwoTowerModule(
        SPEC,
        catalogue(),
        TowerConfig(embedding_dim=8),
        SampledSoftmaxLoss(temperature=0.5),
        NegativeConfig(in_batch=False, num_negatives=16, distribution="popularity"),
        OptimConfig(embedding_l2=0.1),
    )


CONFIGS: dict[str, Callable[[], TwoTowerModule]] = {
    "softmax": _softmax,
    "contrastive_matryoshka": _contrastive_matryoshka,
    "extra_negatives_only": _extra_negatives_only,
}


class _StepLoss(nn.Module):
    """What Lightning's DDP wrapper runs: the module's training loss as the forward pass."""

    def __init__(self, model: TwoTowerModule):
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> torch.Tensor:
        return self.model.step_loss(batch)


def _step(model: TwoTowerModule, step_batch: dict, ddp: bool) -> tuple[float, dict]:
    """One step from the same start on every rank (Lightning's seed_everything): the loss and
    every parameter's gradient (dense)."""
    model.setup("fit")
    runner = DistributedDataParallel(_StepLoss(model), broadcast_buffers=False) if ddp else model
    torch.manual_seed(1)  # the random stream the shared negatives and id dropout draw from
    loss = runner(step_batch) if ddp else model.step_loss(step_batch)
    loss.backward()
    grads = {
        name: param.grad.to_dense().clone()
        for name, param in model.named_parameters()
        if param.grad is not None
    }
    return float(loss.detach()), grads


def _worker(rank: int, port: int, results: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=NUM_RANKS
    )
    try:
        share = len(USERS) // NUM_RANKS
        rows = slice(rank * share, (rank + 1) * share)
        own = batch(USERS[rows], ITEMS[rows], USER_IDS[rows])
        out = {}
        for name, build in CONFIGS.items():
            torch.manual_seed(0)  # the same initial weights on every rank
            out[name] = _step(build(), own, ddp=True)
        out["optimisers"] = _optimisers_under_ddp()
        out["differing_data_refused"] = _differing_data_refused(rank)
        # Plain DDP, for contrast: the module told it is alone, so nothing is gathered.
        module_file.world = lambda: (0, 1)
        torch.manual_seed(0)
        alone = _softmax()
        alone._dense_gradients()  # what DDP's all-reduce takes
        out["softmax_without_gather"] = _step(alone, own, ddp=True)
        torch.save(out, f"{results}.{rank}")
    finally:
        dist.destroy_process_group()


def _optimisers_under_ddp() -> list[str]:
    """The optimisers of a module with sparse id tables, set up for DDP."""
    model = _softmax()
    model.setup("fit")
    optimisers, _ = model.configure_optimizers()
    return [type(o).__name__ for o in optimisers]


def _differing_data_refused(rank: int) -> bool:
    """Whether ranks holding the same arrays pass and ranks holding others are refused."""
    check_same_on_every_rank("alike", [np.arange(5)])
    try:
        check_same_on_every_rank("per rank", [np.arange(5) + rank])
    except RanksDifferError:
        return True
    return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """Each rank's (loss, gradients) per configuration, from one two-process run."""
    results = str(tmp_path_factory.mktemp("ddp") / "rank")
    mp.spawn(_worker, args=(_free_port(), results), nprocs=NUM_RANKS, join=True)
    return [torch.load(f"{results}.{rank}", weights_only=True) for rank in range(NUM_RANKS)]


def _one_process(name: str) -> tuple[float, dict]:
    torch.manual_seed(0)
    return _step(CONFIGS[name](), batch(USERS, ITEMS, USER_IDS), ddp=False)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_two_ranks_give_the_loss_and_gradients_of_one_process_over_the_global_batch(ranks, name):
    loss, grads = _one_process(name)
    losses = [rank[name][0] for rank in ranks]
    assert sum(losses) / NUM_RANKS == pytest.approx(loss, abs=1e-5)
    for rank in ranks:
        rank_grads = rank[name][1]
        assert rank_grads.keys() == grads.keys()
        for param, grad in grads.items():
            torch.testing.assert_close(rank_grads[param], grad, atol=1e-5, rtol=1e-5, msg=param)


def test_without_the_gather_the_gradients_differ(ranks):
    """The check above can fail: each rank's own items as the only in-batch negatives (plain
    DDP) is another loss with other gradients."""
    _, grads = _one_process("softmax")
    _, rank_grads = ranks[0]["softmax_without_gather"]
    assert not all(torch.allclose(rank_grads[p], g, atol=1e-5, rtol=1e-5) for p, g in grads.items())


def test_under_ddp_the_sparse_tables_train_with_adam_not_row_adam(ranks):
    assert all(rank["optimisers"] == ["Adam", "AdamW"] for rank in ranks)


def test_ranks_whose_prepared_data_differ_are_refused(ranks):
    assert all(rank["differing_data_refused"] for rank in ranks)


# -- the loaders: each rank's share -----------------------------------------------------------
def _rank_batches(size: int, batch_size: int, drop_last: bool, epoch: int) -> list[list]:
    """Each rank's training batches of an epoch."""
    ranks = []
    for rank in range(NUM_RANKS):
        batches = _EpochBatches(EpochShuffle(size, seed=5), batch_size, drop_last, rank, NUM_RANKS)
        batches.set_epoch(epoch)
        ranks.append(list(batches))
        assert len(batches) == len(ranks[-1])
    return ranks


@pytest.mark.parametrize("epoch", [0, 3])
def test_the_ranks_training_batches_put_together_are_one_process_batches(epoch):
    one = _EpochBatches(EpochShuffle(103, seed=5), 2 * 10, drop_last=True)
    one.set_epoch(epoch)
    ranks = _rank_batches(103, 10, drop_last=True, epoch=epoch)
    assert [a + b for a, b in zip(*ranks, strict=True)] == list(one)


def test_a_set_smaller_than_the_global_batch_is_split_evenly():
    ranks = _rank_batches(7, 10, drop_last=False, epoch=0)
    assert [len(batch) for rank in ranks for batch in rank] == [3, 3]  # one row left out
    with pytest.raises(TooFewForRanksError):
        _loader(list(range(1)), 10, True, 0, False, ranks=(0, NUM_RANKS))


def test_each_held_out_row_is_ranked_by_one_rank():
    shares = [
        [
            row
            for chunk in _loader(list(range(11)), 4, False, 0, False, (r, 2)).sampler
            for row in chunk
        ]
        for r in range(NUM_RANKS)
    ]
    assert shares == [list(range(6)), list(range(6, 11))]
