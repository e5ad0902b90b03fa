"""The one optimisation loop (`training.trainer.OptimisationLoop`) on a tiny problem: it is AdamW with
its schedule and clipping, step for step, and a resume point continues to the same weights."""

from __future__ import annotations

import pytest
import torch

from training.trainer import OptimisationLoop, StepResult, warmup_cosine, warmup_scaled_cosine

STEPS = 12


def _params() -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(5, 3, generator=g)), torch.nn.Parameter(torch.randn(3, generator=g))]


def _loss(params, step: int) -> torch.Tensor:
    """A least-squares loss on data drawn from the global torch RNG (so a resume must restore it);
    its gradients are large enough for clipping at 1 to bite."""
    w, b = params
    x, y = torch.randn(8, 5), torch.randn(8, 3) * 10
    return ((x @ w + b - y) ** 2).mean() * (1 + step % 3)


def _schedule(s: int) -> float:
    return warmup_cosine(s, 3, STEPS)


def _hand_written(params, weight_decay: float, grad_clip: float, matrices_only: bool) -> list[float]:
    """The loop as `pcclip train` and `pcclip reproduce` each wrote it before they shared one."""
    if matrices_only:
        opt = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
                                 {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}], lr=0.05)
    else:
        opt = torch.optim.AdamW(params, lr=0.05, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule)
    norms = []
    for step in range(STEPS):
        loss = _loss(params, step)
        opt.zero_grad()
        loss.backward()
        if grad_clip > 0:
            norms.append(float(torch.nn.utils.clip_grad_norm_(params, grad_clip)))
        opt.step()
        sched.step()
    return norms


@pytest.mark.parametrize("matrices_only", [False, True], ids=["decay on all", "decay on matrices"])
@pytest.mark.parametrize("grad_clip", [0.0, 1.0], ids=["no clipping", "clip at 1"])
def test_the_loop_is_a_hand_written_adamw_loop_bit_for_bit(matrices_only, grad_clip):
    torch.manual_seed(1)
    expected = _params()
    norms = _hand_written(expected, 0.1, grad_clip, matrices_only)
    if grad_clip:
        assert max(norms) > grad_clip  # the clipping changed some steps

    torch.manual_seed(1)
    params = _params()
    loop = OptimisationLoop(params, lr=0.05, weight_decay=0.1, schedule=_schedule, total_steps=STEPS,
                            grad_clip=grad_clip, decay_matrices_only=matrices_only)
    seen: list[StepResult] = []
    assert loop.run(lambda step: (_loss(params, step), f"details {step}"), seen.append, disable=True) == STEPS
    for p, q in zip(params, expected):
        assert torch.equal(p, q)
    assert [r.step for r in seen] == list(range(1, STEPS + 1))
    assert [r.details for r in seen] == [f"details {s}" for s in range(STEPS)]
    assert [r.lr for r in seen] == [0.05 * _schedule(s) for s in range(1, STEPS + 1)]
    assert [None if r.grad_norm is None else float(r.grad_norm) for r in seen] == (norms or [None] * STEPS)
    assert loop.optimizer.param_groups[0]["weight_decay"] == 0.1
    assert [len(g["params"]) for g in loop.optimizer.param_groups] == ([1, 1] if matrices_only else [2])


def test_a_resume_point_continues_to_the_same_weights(tmp_path):
    def make_loop(params, save_every=0):
        return OptimisationLoop(params, lr=0.05, weight_decay=0.1, schedule=_schedule, total_steps=STEPS, grad_clip=1.0,
                                checkpoint=tmp_path / "last.pt", save_every=save_every,
                                extra_state=lambda step: {"weights": [p.detach().clone() for p in params], "at": step})

    torch.manual_seed(2)
    straight = _params()
    make_loop(straight).run(lambda step: _loss(straight, step), disable=True)
    assert not (tmp_path / "last.pt").exists()  # no checkpoint without save_every or save()

    class Killed(Exception):
        pass

    def killed_at_7(step):
        if step == 7:
            raise Killed
        return _loss(interrupted, step)

    torch.manual_seed(2)
    interrupted = _params()
    with pytest.raises(Killed):
        make_loop(interrupted, save_every=5).run(killed_at_7, disable=True)
    state = torch.load(tmp_path / "last.pt", weights_only=False)
    assert state["step"] == state["at"] == 5

    torch.manual_seed(99)  # the resume point restores the RNG
    resumed = _params()
    with torch.no_grad():
        for p, w in zip(resumed, state["weights"]):
            p.copy_(w)
    loop = make_loop(resumed)
    loop.resume(state)
    assert loop.run(lambda step: _loss(resumed, step), disable=True) == STEPS
    for p, q in zip(resumed, straight):
        assert torch.equal(p, q)


def test_warmup_scaled_cosine_schedule():
    """`pcclip reproduce`'s schedule: warmup times a cosine that starts decaying at step 0."""
    assert warmup_scaled_cosine(0, 4, 20) == pytest.approx(0.25 * 1.0)
    assert warmup_scaled_cosine(3, 4, 20) == pytest.approx(0.5 * (1 + 0.8910065))  # cos(pi * 3 / 20)
    assert warmup_scaled_cosine(10, 4, 20) == pytest.approx(0.5)
    assert warmup_scaled_cosine(20, 4, 20) == pytest.approx(0.0)
