"""A checkpoint's progress comes back exactly as it was saved, whichever format the curve was saved in."""

from __future__ import annotations

import torch

from tasks.checkpoints import load_checkpoint, save_checkpoint


def _learner() -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    return model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)


CURVE = [
    {"step": step, "tokens_seen": step * 4096, "train_loss_nats": 7.0 / step + 1e-17 * step, "lr": 0.1 / step}
    for step in range(1, 2001)
]


def test_the_curve_is_stored_in_columns_and_comes_back_exact(tmp_path):
    model, optimizer, schedule = _learner()
    progress = {"step": 2000, "curve": CURVE, "interval_losses": [0.25], "train_seconds": 1.5}
    save_checkpoint(tmp_path / "c.pt", model, optimizer, schedule, progress)

    stored = torch.load(tmp_path / "c.pt", weights_only=True)["progress"]["curve"]
    assert {name: values.dtype for name, values in stored.items()} == {
        "step": torch.int64,
        "tokens_seen": torch.int64,
        "train_loss_nats": torch.float64,
        "lr": torch.float64,
    }
    fresh, fresh_optimizer, _ = _learner()
    torch.nn.init.zeros_(fresh.weight)
    state = load_checkpoint(tmp_path / "c.pt", fresh, fresh_optimizer)
    assert state["progress"] == progress
    assert [type(value) for value in state["progress"]["curve"][0].values()] == [int, int, float, float]
    assert torch.equal(fresh.weight, model.weight)


def test_a_checkpoint_with_its_curve_as_a_list_loads_the_same(tmp_path):
    """As checkpoints and trunk snapshots were written before the columns."""
    model, optimizer, schedule = _learner()
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "rng": torch.random.get_rng_state(),
        "progress": {"step": 2000, "curve": CURVE, "interval_losses": [], "train_seconds": 1.5},
    }
    torch.save(state, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt", *_learner()[:2])["progress"]["curve"] == CURVE


def test_an_empty_curve_comes_back_empty(tmp_path):
    model, optimizer, schedule = _learner()
    progress = {"step": 0, "curve": [], "interval_losses": [], "train_seconds": 0.0}
    save_checkpoint(tmp_path / "c.pt", model, optimizer, schedule, progress)
    assert load_checkpoint(tmp_path / "c.pt", model, optimizer)["progress"] == progress
