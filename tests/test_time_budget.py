"""--time-budget: the schedule follows the minutes spent, and the run ends annealed when they are spent."""

import json
import math
import signal
from contextlib import nullcontext

import pytest
import torch

from googlenet import budget, create_model, loop, schedule, train
from googlenet import config as C
from googlenet.checkpoint import read_checkpoint
from googlenet.distributed import DistInfo
from googlenet.progress import Progress

from .conftest import small_config

SINGLE = DistInfo(rank=0, world=1, local_rank=0)


@pytest.fixture
def fake_clock(monkeypatch):
    """A clock the budget reads, which moves one second per reading: runs end after a known number of
    readings, however fast this machine is."""
    clock = {"now": 0.0}

    def now():
        clock["now"] += 1.0
        return clock["now"]

    monkeypatch.setattr(budget, "_now", now)
    return clock


def cosine(t):
    return 0.5 * (1 + math.cos(math.pi * t))


def test_budget_schedule_decays_with_the_fraction_spent():
    cfg = C.resolve(train.TrainConfig, None, {"warmup_epochs": 2.0, "schedule": "cosine", "epochs": 3})
    # After the warm-up, only the fraction spent matters, not the step or the epoch count.
    for spent in (0.0, 0.25, 0.6, 1.0):
        assert schedule.lr_factor(500, 10, cfg, spent) == pytest.approx(cosine(spent), abs=1e-12)
    assert schedule.lr_factor(10**6, 10, cfg, 1.0) == pytest.approx(0.0, abs=1e-12)
    # During the warm-up, the ramp caps the decay: continuous wherever the warm-up ends.
    assert schedule.lr_factor(4, 10, cfg, 0.1) == pytest.approx(0.25)
    assert schedule.lr_factor(19, 10, cfg, 0.5) == pytest.approx(cosine(0.5))
    linear = C.resolve(train.TrainConfig, None, {"schedule": "linear"})
    assert schedule.lr_factor(100, 10, linear, 0.3) == pytest.approx(0.7)


def test_progressive_resizing_follows_the_budget():
    cfg = C.resolve(train.TrainConfig, None, {"img_size_start": 32, "img_size": 64, "epochs": 3})
    sizes = [schedule.img_size_at(0, cfg, spent) for spent in (0.0, 0.2, 0.4, 0.6, 0.75, 0.9)]
    assert sizes[0] == 32 and sizes[-2:] == [64, 64] and sizes == sorted(sizes)
    assert len(set(sizes)) > 2  # it ramps rather than jumping


def test_fraction_counts_the_reserve_never_falls_and_carries_over_a_resume(fake_clock):
    b = budget.TimeBudget(1.0, SINGLE, torch.device("cpu"))  # 60 s; the clock reads 1 at the start
    for _ in range(9):
        b.tick()
    assert b.fraction == pytest.approx(9 / 60)
    b.reserve(30.0)  # the final validation must fit: training may use the other 30 s
    b.tick()
    assert b.fraction == pytest.approx(10 / 30)
    b.reserve(1.0)
    b.tick()
    assert b.fraction == pytest.approx(10 / 30)  # 11 / 59 would lower it: held instead
    state = b.state_dict()  # 12 s spent
    again = budget.TimeBudget(1.0, SINGLE, torch.device("cpu"), state)
    again.tick()  # 12 before plus 1 since
    assert again.spent_s() > 13 and again.fraction == pytest.approx(10 / 30)
    for _ in range(60):
        again.tick()
    assert again.spent and again.fraction == 1.0


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def budget_run(image_folder, out, **kw):
    # 24 images in batches of 8: 3 steps an epoch; 0.25 min is 15 clock readings, about 14 steps.
    return small_config(image_folder, out, time_budget=0.25, epochs=1, img_size_start=32, img_size=48, **kw)


def test_a_budgeted_run_ends_by_itself_annealed_and_grown(image_folder, tmp_path, fake_clock):
    train.run(budget_run(image_folder, tmp_path / "run"))
    metrics = read_metrics(tmp_path / "run")
    assert len(metrics) >= 4  # far past --epochs 1: the budget decides
    lrs = [m["lr"] for m in metrics]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.05 * 0.02
    sizes = [m["img_size"] for m in metrics]
    assert sizes[0] == 32 and sizes[-1] == 48 and sizes == sorted(sizes)
    state = read_checkpoint(tmp_path / "run" / "checkpoint_last.pt")["train_state"]
    assert state["budget"]["fraction"] == 1.0
    # Resuming a spent run trains nothing more.
    cfg = C.resolve(train.TrainConfig, None, train.resume_config(str(tmp_path / "run"), {}))
    train.run(cfg)
    assert len(read_metrics(tmp_path / "run")) == len(metrics)


def test_a_budgeted_run_resumes_with_the_minutes_it_had_spent(image_folder, tmp_path, fake_clock, monkeypatch):
    train.run(budget_run(image_folder, tmp_path / "full"))
    full_steps = read_checkpoint(tmp_path / "full" / "checkpoint_last.pt")["train_state"]["global_step"]

    calls = {"n": 0}
    original = Progress.__call__

    def progress_then_sigterm(self, steps, samples, loss_sum):
        calls["n"] += 1
        if calls["n"] == 5:  # epoch 2, its 2nd step
            signal.raise_signal(signal.SIGTERM)
        return original(self, steps, samples, loss_sum)

    monkeypatch.setattr(Progress, "__call__", progress_then_sigterm)
    with pytest.raises(SystemExit):
        train.run(budget_run(image_folder, tmp_path / "split"))
    saved = read_checkpoint(tmp_path / "split" / "checkpoint_last.pt")["train_state"]
    assert saved["budget"]["spent_s"] > 4 and 0 < saved["budget"]["fraction"] < 1
    monkeypatch.setattr(Progress, "__call__", original)

    train.run(C.resolve(train.TrainConfig, None, train.resume_config(str(tmp_path / "split"), {})))
    state = read_checkpoint(tmp_path / "split" / "checkpoint_last.pt")["train_state"]
    assert state["budget"]["fraction"] == 1.0
    # The resumed run spends what was left, not a new budget (two clock readings more: the save and restart).
    assert abs(state["global_step"] - full_steps) <= 2
    assert [m["epoch"] for m in read_metrics(tmp_path / "split")] == list(
        range(1, len(read_metrics(tmp_path / "split")) + 1)
    )


def test_a_spent_budget_ends_the_epoch_mid_way_as_complete():
    model = create_model("googlenet_bn", num_classes=3, aux_logits=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    answers = iter([False, True])
    ctx = loop.StepContext(
        optimizer,
        lambda s: 0.01,
        None,
        0.3,
        0.0,
        nullcontext,
        False,
        None,
        lambda: False,
        budget_spent=lambda: next(answers),
    )
    batches = [(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]), []) for _ in range(5)]
    result = loop.train_one_epoch(model, batches, ctx, 0, lambda *a: False)
    assert (result.steps, result.global_step, result.interrupted) == (2, 2, False)
    assert result.totals.samples == 4
