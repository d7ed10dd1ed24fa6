"""Lightning training plan (an scvi-tools ``TrainingPlan`` subclass) for CaLMFlow."""

from __future__ import annotations

from typing import Any, Literal

import torch
from scvi import REGISTRY_KEYS
from scvi.train import TrainingPlan

from calmflow_sc.data.coupling import ConditionCoupling
from calmflow_sc.data.expression import TARGET_SUM
from calmflow_sc.data.sequences import ControlPool, group_into_sequences
from calmflow_sc.module import CaLMFlowModule

PERTURBATION_KEY = "perturbation"
CONTEXT_KEY = "context"


class CaLMFlowTrainingPlan(TrainingPlan):
    """Turn AnnData minibatches into CaLMFlow sequences and minimise the module's loss.

    Each batch of cells is projected to the representation space, grouped by condition into
    sequences of ``P`` trajectories, paired with sources (noise or control cells of the same
    context) and scored by :meth:`CaLMFlowModule.loss`. Logged: ``train_loss``,
    ``reconstruction_train``, ``kl_train`` and their ``validation`` counterparts.

    Parameters
    ----------
    module
        The CaLMFlow module.
    pca_mean, pca_components, pca_scale
        The representation (see :class:`~calmflow_sc.data.PCARepresentation`).
    normalize_counts
        Log-normalise each batch (the registered matrix holds counts).
    prompt_ids, prompt_mask
        Token ids and masks of every condition, shape ``(n_perturbations, n_contexts, L)``.
    context_radix
        Number of categories of each context key (to combine joint codes into one index).
    source
        ``"noise"`` or ``"control"``.
    control_pool
        Control cells by context (required for ``source="control"`` with random pairing).
    coupling
        Optimal-transport coupling of every training cell with a source within its condition
        (:class:`~calmflow_sc.data.ConditionCoupling`), re-drawn at the start of every epoch. Without
        it, sources are drawn independently for every batch (the paper's random pairing).
    seed
        With a seed, every epoch reseeds the random number generators from ``(seed, epoch)``, so
        that training continued later (same seed) draws what an uninterrupted run would have.
    epoch_offset
        Epochs the model has already been trained for (the epoch count continues from it).
    optimizer_state
        State of the optimizer at the end of the previous training, to continue from.
    **kwargs
        Passed to :class:`scvi.train.TrainingPlan` (``lr``, ``weight_decay``, ...).
    """

    def __init__(
        self,
        module: CaLMFlowModule,
        *,
        pca_mean: torch.Tensor,
        pca_components: torch.Tensor,
        pca_scale: float,
        normalize_counts: bool,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        context_radix: list[int],
        source: Literal["noise", "control"] = "noise",
        control_pool: ControlPool | None = None,
        coupling: ConditionCoupling | None = None,
        seed: int | None = None,
        epoch_offset: int = 0,
        optimizer_state: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("optimizer", "AdamW")
        kwargs.setdefault("weight_decay", 0.01)
        kwargs.setdefault("eps", 1e-8)
        super().__init__(module, n_epochs_kl_warmup=None, n_steps_kl_warmup=None, **kwargs)
        self.register_buffer("pca_mean", pca_mean.float(), persistent=False)
        self.register_buffer("pca_components", pca_components.float(), persistent=False)
        self.register_buffer("prompt_ids", prompt_ids.long(), persistent=False)
        self.register_buffer("prompt_mask", prompt_mask.long(), persistent=False)
        self.pca_scale = float(pca_scale)
        self.normalize_counts = normalize_counts
        self.context_radix = list(context_radix)
        self.source = source
        self.control_pool = control_pool
        self.coupling = coupling
        if source == "control" and control_pool is None and coupling is None:
            raise ValueError("source='control' needs a control pool or a coupling.")
        self.seed = seed
        self.epoch_offset = int(epoch_offset)
        self.optimizer_state = optimizer_state

    # -------------------------------------------------------------- batch -> tensors
    def _coordinates(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.normalize_counts:
            totals = x.sum(dim=1, keepdim=True).clamp(min=1.0)
            x = torch.log1p(x * (TARGET_SUM / totals))
        return ((x - self.pca_mean) @ self.pca_components.T) / self.pca_scale

    def _context_index(self, batch: dict[str, torch.Tensor], n: int, device: torch.device) -> torch.Tensor:
        if not self.context_radix:
            return torch.zeros(n, dtype=torch.long, device=device)
        codes = batch[CONTEXT_KEY].long().view(n, -1)
        index = torch.zeros(n, dtype=torch.long, device=device)
        for j, radix in enumerate(self.context_radix):
            index = index * radix + codes[:, j]
        return index

    def _batch_loss(self, batch: dict[str, torch.Tensor]):
        x = batch[REGISTRY_KEYS.X_KEY]
        n = x.shape[0]
        z = self._coordinates(x)
        perturbation = batch[PERTURBATION_KEY].long().view(n)
        context = self._context_index(batch, n, z.device)
        n_context = self.prompt_ids.shape[1]
        keys = perturbation * n_context + context
        seq = group_into_sequences(keys, self.module.n_trajectories, generator=self._cpu_generator)
        x1 = z[seq]
        seq_perturbation, seq_context = perturbation[seq[:, 0]], context[seq[:, 0]]
        ids = self.prompt_ids[seq_perturbation, seq_context]
        mask = self.prompt_mask[seq_perturbation, seq_context]
        if self.coupling is not None:
            x0 = self.coupling.sources_of(batch[REGISTRY_KEYS.INDICES_KEY].view(n)[seq.cpu()]).to(x1)
        elif self.source == "control":
            x0 = self.control_pool.sources_for(x1, seq_context, generator=self._cpu_generator).to(x1.device)
        else:
            x0 = torch.randn(x1.shape, generator=self._generator, device=x1.device, dtype=x1.dtype)
        return self.module.loss(x0, x1, ids, mask, generator=self._generator), seq.shape[0]

    # ------------------------------------------------------------------- lightning
    def forward(self, *args: Any, **kwargs: Any):
        """Passthrough to the module's forward."""
        return self.module(*args, **kwargs)

    def _log_parts(self, out, n_seq: int, mode: str) -> None:
        self.log(
            f"{mode}_loss",
            out.loss,
            on_epoch=True,
            on_step=False,
            prog_bar=True,
            batch_size=n_seq,
            sync_dist=self.use_sync_dist,
        )
        self.log(
            f"reconstruction_{mode}",
            out.reconstruction,
            on_epoch=True,
            on_step=False,
            batch_size=n_seq,
            sync_dist=self.use_sync_dist,
        )
        self.log(f"kl_{mode}", out.kl, on_epoch=True, on_step=False, batch_size=n_seq, sync_dist=self.use_sync_dist)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One optimisation step on a minibatch of cells."""
        out, n_seq = self._batch_loss(batch)
        if not torch.isfinite(out.loss):
            restored = self._restore_last_good()
            raise FloatingPointError(
                f"non-finite training loss ({out.loss.item()}) at step {self.global_step}, epoch "
                f"{self.current_epoch}; training stopped. The model keeps "
                + ("the weights of the last finished epoch" if restored else "the weights before this step")
                + ". Try a lower learning rate (lr) or check the data."
            )
        self._log_parts(out, n_seq, "train")
        return out.loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Loss on a validation minibatch."""
        out, n_seq = self._batch_loss(batch)
        self._log_parts(out, n_seq, "validation")

    def on_fit_start(self) -> None:
        """Seed the data order of the first epoch (drawn before ``on_train_epoch_start``)."""
        device = self.module.device
        self._cpu_generator = torch.Generator()
        self._generator = self._cpu_generator if device.type == "cpu" else torch.Generator(device=device)
        self._coupled_epoch = None
        self._reseed(data_order=True)
        self._recouple()  # for the validation sanity check; the first epoch reuses it when seeded

    def on_train_start(self) -> None:
        """Training mode (a loaded model starts in evaluation mode); continue the optimizer state."""
        self.module.train()
        self._snapshot_last_good()
        if self.optimizer_state is not None:
            optimizer = self.optimizers().optimizer
            optimizer.load_state_dict(self.optimizer_state)
            for group in optimizer.param_groups:  # the learning rate of this call wins
                group["lr"] = self.lr
                group["weight_decay"] = self.weight_decay

    def on_train_epoch_start(self) -> None:
        """Reseed from ``(seed, epoch)`` so that continued training replays an uninterrupted run.

        Two streams: the global torch generator (data order, dropout), reseeded before each
        epoch's data iterator is made; and the plan's own generators (sources, pairing, path and
        latent noise), reseeded at every epoch start.
        """
        self._reseed(data_order=self.current_epoch > 0)
        self._recouple()

    def _recouple(self) -> None:
        """Re-draw the coupling, unless this seeded epoch's draw is already the current one.

        With a seed, the coupling drawn at fit start (for the validation sanity check) is the one
        the first epoch would draw again from the same reseeded generator: it is kept, and the
        generator is put where that draw left it, so what follows is the same as after a redraw.
        """
        if self.coupling is None:
            return
        epoch = None if self.seed is None else self.epoch_offset + self.current_epoch
        if epoch is not None and epoch == self._coupled_epoch:
            self._cpu_generator.set_state(self._state_after_coupling)
            return
        self.coupling.resample(self._cpu_generator)
        self._coupled_epoch, self._state_after_coupling = epoch, self._cpu_generator.get_state()

    def _reseed(self, *, data_order: bool) -> None:
        if self.seed is None:
            if not getattr(self, "_seeded_once", False):
                seed = int(torch.randint(0, 2**31 - 1, (1,)))
                self._cpu_generator.manual_seed(seed)
                if self._generator is not self._cpu_generator:
                    self._generator.manual_seed(seed)
                self._seeded_once = True
            return
        epoch = self.epoch_offset + self.current_epoch
        if data_order:
            torch.manual_seed((self.seed * 1_000_003 + epoch) % (2**32))
        plan_seed = (self.seed * 2_000_003 + epoch + 17) % (2**32)
        self._cpu_generator.manual_seed(plan_seed)
        if self._generator is not self._cpu_generator:
            self._generator.manual_seed(plan_seed)

    def _trainable(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.module.named_parameters() if p.requires_grad}

    def _snapshot_last_good(self) -> None:
        """Keep a CPU copy of the trainable weights (at the start and after every epoch)."""
        self._last_good = {n: p.detach().to("cpu", copy=True) for n, p in self._trainable().items()}

    def _restore_last_good(self) -> bool:
        """Put back the last good weights if the current ones are not finite; return whether it did."""
        params = self._trainable()
        if all(torch.isfinite(p).all() for p in params.values()):
            return False
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(self._last_good[name].to(param.device))
        return True

    def on_train_epoch_end(self) -> None:
        """Remember the weights of the finished epoch (scvi's ELBO metrics are unused)."""
        if all(torch.isfinite(p).all() for p in self._trainable().values()):
            self._snapshot_last_good()

    def on_validation_epoch_end(self) -> None:
        """Nothing extra: metrics are logged per step (scvi's ELBO metrics are unused)."""
