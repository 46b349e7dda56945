"""trainables.optim: torch.optim's AdamW and SGD updates, bit for bit on CPU, without importing torch._dynamo."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from trainables import optim


def _tensors(seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(8, 24, generator=g)), torch.nn.Parameter(torch.randn(5, generator=g))]


def _grads(steps: int, shapes, seed: int = 7) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(*s, generator=g) for s in shapes] for _ in range(steps)]


def _run(opt, params, grads, lrs=None, skip_second_at=None) -> None:
    for i, step_grads in enumerate(grads):
        opt.zero_grad(set_to_none=True)
        for j, (p, grad) in enumerate(zip(params, step_grads, strict=True)):
            if j == 1 and i == skip_second_at:
                continue  # a tensor without a gradient this step is left alone
            p.grad = grad.clone()
        if lrs is not None:
            opt.param_groups[0]["lr"] = lrs[i]
        opt.step()


KINDS = [
    ("adamw", lambda ps, lr, wd: torch.optim.AdamW(ps, lr=lr, weight_decay=wd)),
    ("sgd", lambda ps, lr, wd: torch.optim.SGD(ps, lr=lr, momentum=0.9, weight_decay=wd)),
]


@pytest.mark.parametrize("name,reference", KINDS)
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_the_update_is_torch_optims_bit_for_bit(name, reference, weight_decay):
    ours, theirs = _tensors(0), _tensors(0)
    grads = _grads(12, [p.shape for p in ours])
    lrs = [0.05 * (0.8 ** i) for i in range(12)]  # a schedule set between steps, as lr_at does
    _run(optim.make_optimizer(name, ours, 0.05, weight_decay), ours, grads, lrs, skip_second_at=3)
    _run(reference(theirs, 0.05, weight_decay), theirs, grads, lrs, skip_second_at=3)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name,reference", KINDS)
def test_state_dicts_restore_across_ours_and_torch_optims(name, reference):
    """A checkpoint of either optimizer restores in the other and the run continues as if never stopped."""
    grads = _grads(8, [p.shape for p in _tensors(1)])
    straight = _tensors(1)
    _run(reference(straight, 0.05, 0.01), straight, grads)

    for first_is_ours in (True, False):
        params = _tensors(1)
        first = optim.make_optimizer(name, params, 0.05, 0.01) if first_is_ours else reference(params, 0.05, 0.01)
        _run(first, params, grads[:3])
        saved = first.state_dict()
        second = reference(params, 0.05, 0.01) if first_is_ours else optim.make_optimizer(name, params, 0.05, 0.01)
        second.load_state_dict(saved)
        _run(second, params, grads[3:])
        for a, b in zip(params, straight, strict=True):
            assert torch.equal(a, b), f"{name}, first {'ours' if first_is_ours else 'torch'}"


def test_a_restored_state_brings_the_schedules_learning_rate_back():
    params = _tensors(2)
    opt = optim.make_optimizer("adamw", params, 0.05, 0.0)
    _run(opt, params, _grads(2, [p.shape for p in params]), lrs=[0.03, 0.02])
    fresh = optim.make_optimizer("adamw", _tensors(2), 0.05, 0.0)
    fresh.load_state_dict(opt.state_dict())
    assert fresh.param_groups[0]["lr"] == 0.02
    assert fresh.state[fresh.params[0]]["step"].item() == 2.0


def test_bad_arguments_and_mismatched_states_are_refused():
    with pytest.raises(ValueError, match="optimizer must be 'adamw' or 'sgd', got 'adam'"):
        optim.make_optimizer("adam", _tensors(0), 0.1, 0.0)
    with pytest.raises(ValueError, match="got no tensors"):
        optim.AdamW([], lr=0.1)
    with pytest.raises(ValueError, match="require grad"):
        optim.SGD([torch.zeros(3)], lr=0.1)
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="same tensor twice"):
        optim.AdamW([p, p])
    with pytest.raises(ValueError, match="lr must be >= 0"):
        optim.AdamW([p], lr=-1.0)
    with pytest.raises(ValueError, match="betas must be in"):
        optim.AdamW([p], betas=(0.9, 1.0))
    two = optim.make_optimizer("adamw", _tensors(0), 0.1, 0.0).state_dict()
    with pytest.raises(ValueError, match="has one of 1"):
        optim.AdamW([p]).load_state_dict(two)
    sgd = optim.SGD(_tensors(0), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="lacks"):
        optim.AdamW(_tensors(0)).load_state_dict({**sgd.state_dict(), "state": {0: {"momentum_buffer": None}}})


def test_a_fresh_process_takes_a_phases_steps_without_importing_torch_dynamo():
    """The point of the module: torch.optim imports torch._dynamo when a process builds its first optimizer
    (seconds in every fresh Tune worker); a whole phase, start to last report, must not."""
    code = textwrap.dedent("""
        import sys, torch
        from trainables.phase import run_phase

        class Model:  # a PromptModel of one number per vector, with a trained head
            device = torch.device("cpu")
            head = torch.nn.Parameter(torch.ones(3))
            def init_vectors(self, text): return torch.full((2, 3), 1.0)
            def project(self, vectors): return "p"
            def loss(self, vectors, batch): return ((vectors * self.head) ** 2).sum()
            def evaluate(self, vectors, examples):
                value = float((vectors ** 2).sum())
                return value, 1.0 / (1.0 + value)
            def extra_parameters(self): return [self.head]
            def extra_state(self): return {}
            def load_extra_state(self, state): pass
            def identity(self): return {"model": "tiny"}

        rows = []
        for name in ("adamw", "sgd"):
            run_phase({"steps": 3, "eval_every": 1, "optimizer": name, "prompt_init": "x"}, Model(), [("a", 0)],
                      [("b", 0)], report=lambda m, c: rows.append(m))
        assert rows[-1]["step"] == 3, rows[-1]
        print("torch._dynamo" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
