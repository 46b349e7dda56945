"""The phases' optimizers: AdamW and SGD with momentum for a few prompt tensors, without ``torch.optim``.

Building a process's first ``torch.optim`` optimizer imports ``torch._dynamo`` (its methods are wrapped in
``torch._disable_dynamo``, which imports it on first use): 1.8-2.7 s on a 2-core CPU, paid by every fresh Tune
worker before its first gradient step, for a phase whose optimizer updates one prompt tensor (and a small head).
These two compute torch's single-tensor update (what ``torch.optim`` runs for CPU tensors) op for op, so the
same gradients give the same bits (``tests/test_optim.py`` checks it against ``torch.optim`` on CPU; on a GPU
``torch.optim`` would default to its multi-tensor kernels, whose rounding may differ in the last bits), and they
read and write ``torch.optim``'s ``state_dict`` format: a checkpoint written by either restores in the other.

What they do not have: parameter groups beyond one, hooks, ``closure``, ``amsgrad``, ``maximize``, Nesterov,
complex tensors. ``param_groups[0]["lr"]`` may be set between steps (a schedule), as with ``torch.optim``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["AdamW", "SGD", "make_optimizer"]


class _PromptOptimizer:
    """One parameter group, per-tensor state, ``torch.optim``'s ``state_dict`` layout."""

    _state_keys: tuple[str, ...] = ()

    def __init__(self, params: Iterable[torch.Tensor], **hyper) -> None:
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__} got no tensors to optimise")
        for p in params:
            if not isinstance(p, torch.Tensor) or not p.requires_grad:
                raise ValueError(f"{type(self).__name__} optimises tensors that require grad; got {type(p).__name__}")
            if p.is_complex():
                raise ValueError(f"{type(self).__name__} does not take complex tensors")
        if len({id(p) for p in params}) != len(params):
            raise ValueError(f"{type(self).__name__} got the same tensor twice")
        if not float(hyper["lr"]) >= 0.0:
            raise ValueError(f"lr must be >= 0, got {hyper['lr']}")
        self.param_groups = [{"params": params, **hyper}]
        self.state: dict[torch.Tensor, dict] = {}

    @property
    def params(self) -> list[torch.Tensor]:
        return self.param_groups[0]["params"]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_()
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        group = self.param_groups[0]
        for p in self.params:
            if p.grad is not None:
                self._update(p, p.grad, self.state.setdefault(p, {}), group)

    def _update(self, param: torch.Tensor, grad: torch.Tensor, state: dict, group: dict) -> None:
        raise NotImplementedError

    # -- torch.optim's state_dict format ------------------------------------------------------------------

    def state_dict(self) -> dict:
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        group["params"] = list(range(len(self.params)))
        return {"state": {i: dict(self.state[p]) for i, p in enumerate(self.params) if self.state.get(p)},
                "param_groups": [group]}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore what ``state_dict`` (this class's or ``torch.optim``'s of the same kind) saved: the
        group's hyperparameters (the learning rate of a schedule among them) and each tensor's state."""
        groups = state_dict.get("param_groups") or []
        if len(groups) != 1 or len(groups[0].get("params", ())) != len(self.params):
            raise ValueError(f"{type(self).__name__}: the saved state has {len(groups)} group(s) of "
                             f"{[len(g.get('params', ())) for g in groups]} tensors; this optimiser has one of "
                             f"{len(self.params)}")
        known = set(self.param_groups[0]) - {"params"}
        for key, value in groups[0].items():
            if key in known:
                self.param_groups[0][key] = value
        self.state = {}
        for index, saved in (state_dict.get("state") or {}).items():
            p = self.params[int(index)]
            missing = [k for k in self._state_keys if k not in saved]
            if missing:
                raise ValueError(f"{type(self).__name__}: the saved state of tensor {index} lacks {missing}")
            self.state[p] = {k: self._cast(k, v, p) for k, v in saved.items()}

    @staticmethod
    def _cast(key: str, value, param: torch.Tensor):
        # as torch.optim does: floating state follows the tensor's dtype and device; the step count stays as saved
        if not isinstance(value, torch.Tensor) or key == "step":
            return value
        return value.to(device=param.device, dtype=param.dtype if value.is_floating_point() else value.dtype)


class AdamW(_PromptOptimizer):
    """``torch.optim.AdamW(params, lr, betas, eps, weight_decay)``'s update (decoupled weight decay)."""

    _state_keys = ("step", "exp_avg", "exp_avg_sq")

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2) -> None:
        if not 0.0 <= betas[0] < 1.0 or not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if not eps >= 0.0 or not weight_decay >= 0.0:
            raise ValueError(f"eps and weight_decay must be >= 0, got {eps} and {weight_decay}")
        # the keys torch.optim.AdamW keeps in a group, so that it can load this state_dict too
        super().__init__(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=False,
                         foreach=None, maximize=False, capturable=False, differentiable=False, fused=None,
                         decoupled_weight_decay=True)

    def _update(self, param, grad, state, group) -> None:
        if not state:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        lr, (beta1, beta2), eps, decay = float(group["lr"]), group["betas"], group["eps"], group["weight_decay"]
        exp_avg, exp_avg_sq, step_t = state["exp_avg"], state["exp_avg_sq"], state["step"]
        step_t += 1
        if decay != 0:
            param.mul_(1 - lr * decay)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step = step_t.item()
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        step_size = lr / bias_correction1
        denom = (exp_avg_sq.sqrt() / bias_correction2**0.5).add_(eps)
        param.addcdiv_(exp_avg, denom, value=-step_size)


class SGD(_PromptOptimizer):
    """``torch.optim.SGD(params, lr, momentum, weight_decay)``'s update (no dampening, no Nesterov)."""

    _state_keys = ("momentum_buffer",)

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-3, momentum: float = 0.0,
                 weight_decay: float = 0.0) -> None:
        if not momentum >= 0.0 or not weight_decay >= 0.0:
            raise ValueError(f"momentum and weight_decay must be >= 0, got {momentum} and {weight_decay}")
        super().__init__(params, lr=lr, momentum=momentum, dampening=0, weight_decay=weight_decay, nesterov=False,
                         maximize=False, foreach=None, differentiable=False, fused=None)

    def _update(self, param, grad, state, group) -> None:
        lr, momentum, decay = float(group["lr"]), group["momentum"], group["weight_decay"]
        if decay != 0:
            grad = grad.add(param, alpha=decay)
        if momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.detach().clone()
            else:
                buf.mul_(momentum).add_(grad, alpha=1 - group["dampening"])
            grad = buf
        param.add_(grad, alpha=-lr)

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.state = {p: s for p, s in self.state.items() if s.get("momentum_buffer") is not None}


def make_optimizer(name: str, params: list, lr: float, weight_decay: float) -> _PromptOptimizer:
    """The phase's optimizer by its config name: ``"adamw"`` (``AdamW``) or ``"sgd"`` (``SGD``, momentum 0.9)."""
    if name == "adamw":
        return AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {name!r}")
