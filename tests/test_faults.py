"""Faults during training: non-finite losses and interruptions leave a usable model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

import calmflow_sc as cf
from tests.test_model import QUIET, SMALL, synthetic


class InterruptAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            raise KeyboardInterrupt


class PoisonWeightsAt(Callback):
    """Make the weights non-finite after a given step, as a diverging optimiser would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.module.decoder[-1].weight.fill_(float("nan"))


class RecordFirstEpochEnd(Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == 0:
            self.weights = {n: p.detach().clone() for n, p in pl_module.module.named_parameters()}


def fresh_model():
    adata = synthetic()
    cf.CaLMFlowModel.setup_anndata(adata, perturbation_key="condition", context_keys=["cell_type"])
    return cf.CaLMFlowModel(adata, **{**SMALL, "n_components": 4})


def test_keyboard_interrupt_keeps_a_model_that_predicts():
    import signal

    model = fresh_model()
    with pytest.warns(UserWarning, match="training interrupted"):
        model.train(max_epochs=50, batch_size=16, seed=0, callbacks=[InterruptAt(7)], **QUIET)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert model.is_trained and not model.module.training
    assert len(model.history["train_loss"]) >= 1
    pred = model.predict_perturbation("A", {"cell_type": "x"}, n_cells=4, seed=0)
    assert np.isfinite(pred.X).all()


def test_non_finite_loss_stops_with_clear_message_and_restores_last_good_weights():
    model = fresh_model()
    record = RecordFirstEpochEnd()
    # 6 batches per epoch: the weights turn NaN during epoch 2, the loss of the next batch is NaN
    with pytest.raises(FloatingPointError, match=r"non-finite training loss.*last finished epoch"):
        model.train(max_epochs=5, batch_size=16, seed=0, callbacks=[record, PoisonWeightsAt(8)], **QUIET)
    params = dict(model.module.named_parameters())
    for name, value in record.weights.items():
        torch.testing.assert_close(params[name], value, msg=f"{name} is not the end-of-epoch-1 weight")
    assert not model.module.training
    pred = model.predict_perturbation("A", {"cell_type": "x"}, n_cells=4, seed=0)
    assert np.isfinite(pred.X).all()


def test_training_continues_across_save_load_like_one_run(tmp_path):
    import scvi

    def build():
        scvi.settings.seed = 3
        adata = synthetic()
        cf.CaLMFlowModel.setup_anndata(adata, perturbation_key="condition", context_keys=["cell_type"])
        return adata, cf.CaLMFlowModel(adata, **{**SMALL, "n_components": 4})

    _, whole = build()
    whole.train(max_epochs=4, batch_size=32, seed=1, **QUIET)

    adata, first = build()
    first.train(max_epochs=2, batch_size=32, seed=1, **QUIET)
    assert first.epochs_trained_ == 2 and first.optimizer_state_ is not None
    first.save(tmp_path / "half")
    resumed = cf.CaLMFlowModel.load(tmp_path / "half", adata=adata)
    resumed.train(max_epochs=2, batch_size=32, seed=1, **QUIET)
    assert resumed.epochs_trained_ == 4
    for (name, a), (_, b) in zip(whole.module.named_parameters(), resumed.module.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=f"{name} differs after resuming")

    _, fresh = build()
    fresh.train(max_epochs=2, batch_size=32, seed=1, **QUIET)
    fresh.train(max_epochs=2, batch_size=32, seed=1, continue_training=False, **QUIET)
    differs = any(
        not torch.allclose(a, b, atol=1e-5)
        for a, b in zip(whole.module.parameters(), fresh.module.parameters(), strict=True)
    )
    assert differs, "a fresh optimizer should not reproduce the continued run"
