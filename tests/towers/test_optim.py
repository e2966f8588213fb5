import pytest
import torch

from towers.optim import RowAdam

ROWS, DIM = 200, 8


def _train(
    optimizer: str, steps: int, schedule=None, sparse: bool = True, loss: str = "linear"
) -> torch.Tensor:
    """An embedding table trained with skewed row frequencies: the frequent rows are touched
    every step, the rare ones every few hundred. The linear loss's gradient does not depend on
    the weights, so long trajectories cannot drift apart chaotically; the quadratic one's does,
    so a row read before its pending steps are applied gets a different gradient."""
    torch.manual_seed(0)
    table = torch.nn.Embedding(ROWS, DIM, sparse=sparse and optimizer != "dense")
    direction = torch.randn(ROWS, DIM)
    if optimizer == "dense":
        opt = torch.optim.Adam(table.parameters(), lr=0.01)
    elif optimizer == "lazy":
        opt = torch.optim.SparseAdam(table.parameters(), lr=0.01)
    else:
        opt = RowAdam(table.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, schedule or (lambda step: 1.0))
    draws = torch.Generator().manual_seed(1)
    for _ in range(steps):
        ids = (torch.rand(16, generator=draws) ** 3 * ROWS).long()
        if optimizer == "row":
            opt.catch_up(table.weight, ids)
        rows = table(ids)
        value = rows * direction[ids] if loss == "linear" else (rows - direction[ids]) ** 2
        opt.zero_grad()
        value.sum().backward()
        opt.step()
        scheduler.step()
    if isinstance(opt, RowAdam):
        opt.flush()
    return table.weight.detach()


def _gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def test_row_wise_updates_follow_dense_adam_where_lazy_adam_does_not():
    start = _train("dense", 0)
    dense = _train("dense", 2000)
    moved = _gap(dense, start)
    assert moved > 10
    assert _gap(_train("row", 2000), dense) < 1e-5 * moved
    assert _gap(_train("lazy", 2000), dense) > 0.05 * moved


def test_row_wise_updates_follow_dense_adam_under_a_decaying_learning_rate():
    def decay(step: int) -> float:
        return 1 - step / 2000

    # The learning rate is held at its value of the row's last update through its idle steps.
    dense = _train("dense", 2000, decay)
    assert _gap(_train("row", 2000, decay), dense) < 0.003 * _gap(dense, _train("dense", 0))


def test_rows_caught_up_before_they_are_read_get_dense_adams_gradients():
    dense = _train("dense", 100, loss="quadratic")
    moved = _gap(dense, _train("dense", 0))
    torch.testing.assert_close(_train("row", 100, loss="quadratic"), dense, atol=1e-5, rtol=0)
    assert moved > 0.5


def test_a_dense_gradient_updates_every_row_as_dense_adam_does():
    dense = _train("dense", 300, sparse=False)
    torch.testing.assert_close(_train("row", 300, sparse=False), dense, atol=1e-5, rtol=1e-5)


def test_a_step_touches_only_the_batch_rows_until_they_are_caught_up():
    table = torch.nn.Embedding(6, 2, sparse=True)
    opt = RowAdam(table.parameters(), lr=0.1)
    for ids in ([0, 1], [2]):
        before = table.weight.detach().clone()
        opt.zero_grad()
        table(torch.tensor(ids)).sum().backward()
        opt.step()
        changed = (table.weight.detach() != before).any(1).nonzero().flatten().tolist()
        assert changed == ids
    before = table.weight.detach().clone()
    opt.flush()  # rows 0 and 1 keep moving on their first moments through step 2, as in Adam
    changed = (table.weight.detach() != before).any(1).nonzero().flatten().tolist()
    assert changed == [0, 1]
    state = opt.state[table.weight]
    assert state["last"].tolist() == [2, 2, 2, 0, 0, 0]  # rows never updated have nothing to do
    flushed = table.weight.detach().clone()
    opt.flush()  # nothing pending: a second flush changes nothing
    assert torch.equal(table.weight.detach(), flushed)


def test_state_round_trips_through_state_dict():
    table = torch.nn.Embedding(6, 2, sparse=True)
    opt = RowAdam(table.parameters(), lr=0.1)
    opt.zero_grad()
    table(torch.tensor([1, 3])).sum().backward()
    opt.step()
    restored = RowAdam(table.parameters(), lr=0.1)
    restored.load_state_dict(opt.state_dict())
    state = restored.state[table.weight]
    assert state["step"] == 1 and state["last"].tolist() == [0, 1, 0, 1, 0, 0]
    assert state["last"].dtype == torch.int64  # torch would cast it to the table's float dtype
    opt.zero_grad()
    table(torch.tensor([1])).sum().backward()
    restored.step()  # and the restored optimiser steps on


def test_without_momentum_there_is_nothing_to_catch_up():
    table = torch.nn.Embedding(4, 2, sparse=True)
    opt = RowAdam(table.parameters(), lr=0.1, betas=(0.0, 0.999))
    opt.zero_grad()
    table(torch.tensor([0])).sum().backward()
    opt.step()
    opt.zero_grad()
    table(torch.tensor([1])).sum().backward()
    opt.step()
    before = table.weight.detach().clone()
    opt.flush()
    assert torch.equal(table.weight.detach(), before)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="2-D"):
        RowAdam([torch.nn.Parameter(torch.zeros(3))])
    with pytest.raises(ValueError, match="betas"):
        RowAdam([torch.nn.Parameter(torch.zeros(3, 2))], betas=(0.9, 1.0))
