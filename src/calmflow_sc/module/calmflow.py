"""The CaLMFlow torch module: space-time tokens of trajectories through a causal transformer.

Knows tensors and token ids only (never AnnData). Shapes use ``B`` batch, ``P`` trajectories
per sequence, ``N`` time points, ``D`` state dimension, ``K`` spatial tokens per state,
``H`` backbone hidden size, ``L`` prompt length and ``Z`` latent dimension.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from calmflow_sc.module.backbone import FinetuneMode, apply_finetuning, build_backbone
from calmflow_sc.module.paths import straight_paths

VARIANCE_FLOOR = 1e-4


@dataclass
class CaLMFlowOutput:
    """Teacher-forced predictions of the next state for every step.

    Attributes
    ----------
    prediction
        Decoded next states, shape ``(B, P, N-1, D)``.
    mu, var
        Mean and variance of each output token's latent, shape ``(B, P, N-1, K, Z)``.
    """

    prediction: torch.Tensor
    mu: torch.Tensor
    var: torch.Tensor


@dataclass
class CaLMFlowLoss:
    """Loss of one batch with its parts reported separately.

    Attributes
    ----------
    loss
        ``reconstruction + beta * kl`` (the quantity minimised).
    reconstruction
        Mean over batch, trajectories and steps of the squared error of the next state summed
        over ``D`` (divided by ``dt**2``, i.e. in velocity units, for a residual module).
    kl
        Mean over output tokens of ``KL(N(mu, var) || N(0, I))`` summed over ``Z``.
    """

    loss: torch.Tensor
    reconstruction: torch.Tensor
    kl: torch.Tensor


def _mlp(n_in: int, n_hidden: int, n_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, n_hidden), nn.LayerNorm(n_hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(n_hidden, n_out)
    )


class CaLMFlowModule(nn.Module):
    """Flow matching as a Volterra integral equation solved by a causal language model.

    Each state ``z_i`` of a trajectory is encoded into ``K`` spatial tokens; the tokens of
    ``P`` trajectories are interleaved (time outermost, then trajectory, then spatial token)
    after an optional text prompt, and a causal transformer predicts, at the tokens of time
    ``i``, a variational latent per token from which the state at ``i + 1`` is decoded.

    Parameters
    ----------
    n_features
        Dimension ``D`` of a state.
    backbone
        Preset name, config, model instance or local path / hub id (see
        :func:`~calmflow_sc.module.backbone.build_backbone`).
    n_spatial_tokens
        ``K``, tokens per state.
    n_trajectories
        ``P``, trajectories interleaved in one sequence.
    n_time_points
        ``N``, points of the time grid (both endpoints included).
    latent_dim
        ``Z``; defaults to the backbone's hidden size.
    encoder_hidden
        Width of the encoder MLP; defaults to ``max(4 * D, H)`` capped at 1024.
    decoder_hidden
        Width of the decoder MLP; defaults to ``encoder_hidden``.
    dropout
        Dropout in the encoder MLP (paper: 0.1).
    beta
        Weight of the KL term.
    path_sigma
        Path noise standard deviation at interior points.
    vocab_size
        Vocabulary size of a preset backbone (the condition tokenizer's size).
    residual
        Decode the velocity ``(z_{i+1} - z_i) / dt`` (``dt = 1 / (N - 1)``) and step
        ``z_{i+1} = z_i + dt * v`` instead of decoding the state itself; the reconstruction loss is
        then measured in the same velocity units (the squared error of the next state over
        ``dt**2``). The paper decodes states (``False``). Velocities make the identity flow trivial
        and keep the decoder's targets of order one however fine the time grid, which matters when
        sources are control cells close to their targets: per step, a state moves by a fraction
        ``dt`` of the distance between source and target, which a decoder of increments (and the
        KL term beside its loss) would have to resolve ``N - 1`` times more finely.
    finetune
        ``"full"``, ``"lora"`` or ``"frozen"`` (see :func:`~calmflow_sc.module.backbone.apply_finetuning`).
    lora_kwargs
        Keyword arguments for LoRA (``lora_rank``, ``lora_alpha``, ``lora_dropout``, ``target_modules``).
    from_pretrained_kwargs
        Extra arguments for ``from_pretrained`` when ``backbone`` is a path or hub id.
    """

    def __init__(
        self,
        n_features: int,
        backbone: str | PretrainedConfig | PreTrainedModel = "gpt-neox-small",
        *,
        n_spatial_tokens: int = 1,
        n_trajectories: int = 1,
        n_time_points: int = 16,
        latent_dim: int | None = None,
        encoder_hidden: int | None = None,
        decoder_hidden: int | None = None,
        dropout: float = 0.1,
        beta: float = 0.1,
        path_sigma: float = 0.0,
        vocab_size: int = 64,
        finetune: FinetuneMode = "full",
        residual: bool = False,
        lora_kwargs: dict[str, Any] | None = None,
        from_pretrained_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("n_features", n_features, 1),
            ("n_spatial_tokens", n_spatial_tokens, 1),
            ("n_trajectories", n_trajectories, 1),
            ("n_time_points", n_time_points, 2),
        ):
            if int(value) != value or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
        self.n_features = int(n_features)
        self.n_spatial_tokens = int(n_spatial_tokens)
        self.n_trajectories = int(n_trajectories)
        self.n_time_points = int(n_time_points)
        self.beta = float(beta)
        self.path_sigma = float(path_sigma)
        self.residual = bool(residual)

        base = build_backbone(
            backbone,
            vocab_size=vocab_size,
            max_positions=max(2048, 2 * n_time_points * n_trajectories * n_spatial_tokens),
            from_pretrained_kwargs=from_pretrained_kwargs,
        )
        hidden = int(base.config.hidden_size)
        self.hidden_size = hidden
        self.latent_dim = int(latent_dim or hidden)
        self.finetune = finetune
        self.backbone = apply_finetuning(base, finetune, **(lora_kwargs or {}))
        # transformers 5.x renamed `past_key_values` to `cache`; accept either.
        forward_args = inspect.signature(base.forward).parameters
        self._cache_argument = "cache" if "cache" in forward_args else "past_key_values"

        enc_hidden = encoder_hidden or min(max(4 * self.n_features, hidden), 1024)
        dec_hidden = decoder_hidden or enc_hidden
        k, z = self.n_spatial_tokens, self.latent_dim
        self.encoder = _mlp(self.n_features, enc_hidden, k * hidden, dropout)
        self.mu_head = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, z))
        self.logvar_head = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, z))
        self.decoder = _mlp(k * z, dec_hidden, self.n_features, 0.0)

    # ------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        """Device of the module's parameters."""
        return next(self.parameters()).device

    @property
    def dt(self) -> float:
        """Step of the time grid, ``1 / (N - 1)``."""
        return 1.0 / (self.n_time_points - 1)

    @property
    def base_model(self) -> PreTrainedModel:
        """The Hugging Face base model (unwrapped from peft in LoRA mode)."""
        inner = self.backbone
        return inner.get_base_model() if hasattr(inner, "get_base_model") else inner

    def _embed_prompt(
        self, prompt_ids: torch.Tensor | None, prompt_mask: torch.Tensor | None, batch_size: int
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Embed a left-padded prompt; return embeddings and the 0/1 mask (B, L)."""
        device = self.device
        if prompt_ids is None:
            return None, torch.zeros(batch_size, 0, dtype=torch.long, device=device)
        if prompt_ids.dim() != 2 or prompt_ids.shape[0] != batch_size:
            raise ValueError(f"prompt_ids must have shape (B={batch_size}, L), got {tuple(prompt_ids.shape)}.")
        if prompt_mask is None:
            prompt_mask = torch.ones_like(prompt_ids)
        if prompt_mask.shape != prompt_ids.shape:
            raise ValueError(
                f"prompt_mask shape {tuple(prompt_mask.shape)} differs from prompt_ids {tuple(prompt_ids.shape)}."
            )
        embeddings = self.base_model.get_input_embeddings()(prompt_ids.to(device))
        return embeddings, prompt_mask.to(device=device, dtype=torch.long)

    def encode_states(self, states: torch.Tensor) -> torch.Tensor:
        """Encode states ``(B, n, P, D)`` (time-major) into flow tokens ``(B, n*P*K, H)``."""
        b, n, p, _ = states.shape
        tokens = self.encoder(states)  # (B, n, P, K*H)
        return tokens.reshape(b, n * p * self.n_spatial_tokens, self.hidden_size)

    def _run_backbone(
        self,
        embeddings: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        past_key_values: Any = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, Any]:
        cache_kwarg = {self._cache_argument: past_key_values} if past_key_values is not None else {}
        out = self.backbone(
            inputs_embeds=embeddings,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            **cache_kwarg,
        )
        if not use_cache:
            return out.last_hidden_state, None
        cache = getattr(out, "cache", None)
        return out.last_hidden_state, cache if cache is not None else out.past_key_values

    def _latent_params(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map hidden states ``(..., H)`` to latent mean and variance ``(..., Z)``."""
        mu = self.mu_head(hidden)
        var = torch.exp(self.logvar_head(hidden)) + VARIANCE_FLOOR
        return mu, var

    def _decode(
        self,
        hidden: torch.Tensor,
        temperature: float,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode flow-token hidden states ``(B, n, P, K, H)`` into next states ``(B, n, P, D)``."""
        mu, var = self._latent_params(hidden)
        if temperature > 0:
            eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
            latent = mu + temperature * var.sqrt() * eps
        else:
            latent = mu
        b, n, p = latent.shape[:3]
        states = self.decoder(latent.reshape(b, n, p, self.n_spatial_tokens * self.latent_dim))
        return states, mu, var

    # ----------------------------------------------------------------- training
    def make_paths(
        self, x0: torch.Tensor, x1: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Straight paths from sources to targets on the module's time grid.

        Parameters
        ----------
        x0, x1
            Sources and targets, shape ``(B, P, D)``.
        generator
            Random generator for path noise.

        Returns
        -------
        Paths of shape ``(B, P, N, D)``.
        """
        return straight_paths(x0, x1, self.n_time_points, sigma=self.path_sigma, generator=generator)

    def forward(
        self,
        paths: torch.Tensor,
        prompt_ids: torch.Tensor | None = None,
        prompt_mask: torch.Tensor | None = None,
        *,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> CaLMFlowOutput:
        """Teacher-forced prediction of every next state of the given paths.

        Parameters
        ----------
        paths
            Trajectories ``(B, P, N, D)``; ``P`` must equal ``n_trajectories``.
        prompt_ids
            Left-padded condition token ids ``(B, L)`` or ``None``.
        prompt_mask
            1 for real prompt tokens, 0 for padding, ``(B, L)``.
        temperature
            Scale of the reparameterisation noise (1 in training, 0 for the mean).
        generator
            Random generator for the latent noise.

        Returns
        -------
        :class:`CaLMFlowOutput` with predictions of states ``1..N-1``.
        """
        self._check_paths(paths)
        b, p, n, _ = paths.shape
        inputs = paths[:, :, :-1].transpose(1, 2)  # (B, N-1, P, D), time-major
        flow = self.encode_states(inputs)
        prompt_emb, mask = self._embed_prompt(prompt_ids, prompt_mask, b)
        embeddings = flow if prompt_emb is None else torch.cat([prompt_emb, flow], dim=1)
        attention_mask, position_ids = self._masks_and_positions(mask, flow.shape[1], start=0)
        hidden, _ = self._run_backbone(embeddings, attention_mask, position_ids)
        hidden = hidden[:, mask.shape[1] :].reshape(b, n - 1, p, self.n_spatial_tokens, self.hidden_size)
        states, mu, var = self._decode(hidden, temperature, generator)
        if self.residual:
            states = inputs + self.dt * states
        return CaLMFlowOutput(prediction=states.transpose(1, 2), mu=mu.transpose(1, 2), var=var.transpose(1, 2))

    def loss(
        self,
        x0: torch.Tensor,
        x1: torch.Tensor,
        prompt_ids: torch.Tensor | None = None,
        prompt_mask: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> CaLMFlowLoss:
        """Loss of one batch of source/target pairs.

        Parameters
        ----------
        x0, x1
            Sources and targets ``(B, P, D)``.
        prompt_ids, prompt_mask
            Optional left-padded prompt ``(B, L)``.
        generator
            Random generator for path and latent noise.

        Returns
        -------
        :class:`CaLMFlowLoss` with the total and its reconstruction and KL parts.
        """
        paths = self.make_paths(x0, x1, generator=generator)
        out = self.forward(paths, prompt_ids, prompt_mask, temperature=1.0, generator=generator)
        target = paths[:, :, 1:]
        reconstruction = (out.prediction - target).pow(2).sum(-1).mean()
        if self.residual:  # in velocity units
            reconstruction = reconstruction / self.dt**2
        kl = 0.5 * (out.var + out.mu.pow(2) - 1.0 - out.var.log()).sum(-1).mean()
        return CaLMFlowLoss(loss=reconstruction + self.beta * kl, reconstruction=reconstruction, kl=kl)

    # ----------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(
        self,
        x0: torch.Tensor,
        prompt_ids: torch.Tensor | None = None,
        prompt_mask: torch.Tensor | None = None,
        *,
        temperature: float = 1.0,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
        return_trajectory: bool = False,
    ) -> torch.Tensor:
        """Roll trajectories out autoregressively from sources ``x0``.

        Parameters
        ----------
        x0
            Sources ``(B, P, D)`` (any ``P >= 1``; the trained ``n_trajectories`` is the natural choice).
        prompt_ids, prompt_mask
            Optional left-padded prompt ``(B, L)``.
        temperature
            Scale of the latent noise at each step (0: the mean latent).
        use_cache
            Feed only the new tokens each step, reusing the backbone's key/value cache. ``False``
            re-encodes the whole sequence each step (the reference procedure).
        generator
            Random generator for the latent noise; the same generator state gives the same
            trajectories with and without the cache.
        return_trajectory
            Return all ``N`` states instead of the final one.

        Returns
        -------
        ``(B, P, D)`` final states, or ``(B, P, N, D)`` with ``return_trajectory``.
        """
        if x0.dim() != 3 or x0.shape[-1] != self.n_features:
            raise ValueError(f"x0 must have shape (B, P, D={self.n_features}), got {tuple(x0.shape)}.")
        was_training = self.training
        self.eval()
        try:
            b, p, _ = x0.shape
            prompt_emb, mask = self._embed_prompt(prompt_ids, prompt_mask, b)
            n_prompt = mask.shape[1]
            tokens_per_step = p * self.n_spatial_tokens
            states = [x0]
            cache = None
            for step in range(self.n_time_points - 1):
                if use_cache:
                    new = self.encode_states(states[-1].unsqueeze(1))
                    start = step * tokens_per_step
                    embeddings = new if (step > 0 or prompt_emb is None) else torch.cat([prompt_emb, new], 1)
                    attention_mask, position_ids = self._masks_and_positions(mask, start + tokens_per_step, start=start)
                    if step > 0:
                        position_ids = position_ids[:, n_prompt:] if n_prompt else position_ids
                    hidden, cache = self._run_backbone(
                        embeddings, attention_mask, position_ids, past_key_values=cache, use_cache=True
                    )
                else:
                    flow = self.encode_states(torch.stack(states, dim=1))
                    embeddings = flow if prompt_emb is None else torch.cat([prompt_emb, flow], dim=1)
                    attention_mask, position_ids = self._masks_and_positions(mask, flow.shape[1], start=0)
                    hidden, _ = self._run_backbone(embeddings, attention_mask, position_ids)
                last = hidden[:, -tokens_per_step:].reshape(b, 1, p, self.n_spatial_tokens, self.hidden_size)
                nxt, _, _ = self._decode(last, temperature, generator)
                states.append(states[-1] + self.dt * nxt[:, 0] if self.residual else nxt[:, 0])
        finally:
            self.train(was_training)
        if return_trajectory:
            return torch.stack(states, dim=2)
        return states[-1]

    # ------------------------------------------------------------------ internals
    def _masks_and_positions(
        self, prompt_mask: torch.Tensor, n_flow_total: int, *, start: int
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Attention mask over prompt + flow tokens ``[0, n_flow_total)`` and position ids.

        Position ids count real prompt tokens only, so left padding never shifts the positions
        of flow tokens. Returned positions cover the prompt plus flow tokens ``[start, n_flow_total)``.
        Without padding the mask is ``None``, so the backbone can use its plain causal attention
        path (no explicit 4-D mask).
        """
        b = prompt_mask.shape[0]
        device = prompt_mask.device
        flow_mask = torch.ones(b, n_flow_total, dtype=torch.long, device=device)
        attention_mask = torch.cat([prompt_mask, flow_mask], dim=1)
        prompt_len = prompt_mask.sum(dim=1, keepdim=True)
        prompt_pos = (prompt_mask.cumsum(dim=1) - 1).clamp(min=0)
        flow_pos = prompt_len + torch.arange(start, n_flow_total, device=device).unsqueeze(0)
        if bool(prompt_mask.all()):
            attention_mask = None
        return attention_mask, torch.cat([prompt_pos, flow_pos], dim=1)

    def _check_paths(self, paths: torch.Tensor) -> None:
        expected = (self.n_trajectories, self.n_time_points, self.n_features)
        if paths.dim() != 4 or tuple(paths.shape[1:]) != expected:
            raise ValueError(f"paths must have shape (B, P, N, D) = (B, {expected}), got {tuple(paths.shape)}.")

    def trainable_parameter_names(self) -> Sequence[str]:
        """Names of the parameters that receive gradients."""
        return [name for name, param in self.named_parameters() if param.requires_grad]
