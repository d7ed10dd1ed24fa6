"""Conditional flow matching (CFM / OT-CFM) on tensors: MLP velocity field and ODE solve.

The paper's main competitor. Velocity ``v(x, t, c)`` is an MLP over the state, the time and
an optional condition vector; sampling integrates ``dx/dt = v`` with torchdiffeq.
"""

from __future__ import annotations

import torch
from torch import nn
from torchdiffeq import odeint

from calmflow_sc.module.paths import minibatch_ot_permutation


class VelocityField(nn.Module):
    """MLP velocity field ``v(x, t, c)``.

    Parameters
    ----------
    n_features
        State dimension ``D``.
    n_conditions
        Width of the condition vector (0 for unconditional).
    hidden
        Width of the hidden layers.
    n_layers
        Number of hidden layers.
    """

    def __init__(self, n_features: int, n_conditions: int = 0, hidden: int = 256, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = n_features + 1 + n_conditions
        for _ in range(n_layers):
            layers += [nn.Linear(width, hidden), nn.SELU()]
            width = hidden
        layers.append(nn.Linear(width, n_features))
        self.net = nn.Sequential(*layers)
        self.n_features = n_features
        self.n_conditions = n_conditions

    def forward(self, x: torch.Tensor, t: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """Velocity at states ``x`` ``(B, D)`` and times ``t`` ``(B,)`` or scalar."""
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        parts = [x, t.unsqueeze(-1).to(x.dtype)]
        if self.n_conditions:
            if condition is None:
                raise ValueError("this velocity field is conditional: pass `condition`.")
            parts.append(condition)
        return self.net(torch.cat(parts, dim=-1))


def cfm_loss(
    field: VelocityField,
    x0: torch.Tensor,
    x1: torch.Tensor,
    condition: torch.Tensor | None = None,
    *,
    ot_pairing: bool = False,
    sigma: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Conditional flow-matching regression loss on straight paths.

    Parameters
    ----------
    field
        The velocity field.
    x0, x1
        Sources and targets ``(B, D)``.
    condition
        Condition vectors ``(B, C)`` for a conditional field.
    ot_pairing
        Re-pair sources to targets by minibatch exact OT (OT-CFM).
    sigma
        Gaussian noise around the straight path.
    generator
        Random generator for times and noise.

    Returns
    -------
    Mean squared error between ``v(x_t, t)`` and ``x1 - x0``.
    """
    if ot_pairing:
        x0 = x0[minibatch_ot_permutation(x0, x1)]
    t = torch.rand(x0.shape[0], generator=generator, device=x0.device, dtype=x0.dtype)
    xt = (1 - t[:, None]) * x0 + t[:, None] * x1
    if sigma > 0:
        xt = xt + sigma * torch.randn(xt.shape, generator=generator, device=xt.device, dtype=xt.dtype)
    return (field(xt, t, condition) - (x1 - x0)).pow(2).mean()


@torch.no_grad()
def cfm_sample(
    field: VelocityField,
    x0: torch.Tensor,
    condition: torch.Tensor | None = None,
    *,
    method: str = "dopri5",
    n_steps: int = 100,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    return_trajectory: bool = False,
) -> torch.Tensor:
    """Integrate ``dx/dt = v(x, t, c)`` from ``t = 0`` to ``1`` with torchdiffeq.

    Parameters
    ----------
    field
        The trained velocity field.
    x0
        Sources ``(B, D)``.
    condition
        Condition vectors ``(B, C)``.
    method
        torchdiffeq solver (``"dopri5"`` adaptive, ``"euler"``, ``"rk4"``, ...).
    n_steps
        Number of output time points (and fixed steps for fixed-step solvers).
    atol, rtol
        Tolerances of adaptive solvers.
    return_trajectory
        Return states at all ``n_steps`` times ``(n_steps, B, D)``.

    Returns
    -------
    Final states ``(B, D)`` or the trajectory.
    """
    was_training = field.training
    field.eval()
    t = torch.linspace(0, 1, n_steps, device=x0.device, dtype=x0.dtype)
    options = {} if method in ("dopri5", "dopri8", "bosh3", "adaptive_heun") else {"step_size": 1.0 / (n_steps - 1)}
    traj = odeint(lambda s, x: field(x, s, condition), x0, t, method=method, atol=atol, rtol=rtol, options=options)
    field.train(was_training)
    return traj if return_trajectory else traj[-1]
