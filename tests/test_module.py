"""Tests of the tensor-level CaLMFlow module."""

from __future__ import annotations

import pytest
import torch

from calmflow_sc.module import (
    CaLMFlowModule,
    apply_finetuning,
    build_backbone,
    minibatch_ot_permutation,
    straight_paths,
)

D = 3


def make(backbone: str = "gpt-neox-tiny", **kwargs) -> CaLMFlowModule:
    torch.manual_seed(0)
    defaults = dict(n_spatial_tokens=1, n_trajectories=1, n_time_points=5, vocab_size=16, dropout=0.0)
    defaults.update(kwargs)
    return CaLMFlowModule(D, backbone, **defaults)


def prompt(b: int, length: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, 16, (b, length))
    mask = torch.ones_like(ids)
    return ids, mask


@pytest.mark.parametrize("backbone", ["gpt2-tiny", "gpt-neox-tiny"])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("p", [1, 4])
@pytest.mark.parametrize("with_prompt", [False, True])
def test_shapes(backbone, k, p, with_prompt):
    m = make(backbone, n_spatial_tokens=k, n_trajectories=p)
    b, n = 2, m.n_time_points
    x0, x1 = torch.randn(b, p, D), torch.randn(b, p, D)
    ids, mask = prompt(b) if with_prompt else (None, None)
    paths = m.make_paths(x0, x1)
    assert paths.shape == (b, p, n, D)
    out = m(paths, ids, mask)
    assert out.prediction.shape == (b, p, n - 1, D)
    assert out.mu.shape == (b, p, n - 1, k, m.latent_dim)
    assert (out.var >= 1e-4).all()
    loss = m.loss(x0, x1, ids, mask)
    assert loss.loss.ndim == 0 and torch.isfinite(loss.loss)
    torch.testing.assert_close(loss.loss, loss.reconstruction + m.beta * loss.kl)
    sample = m.sample(x0, ids, mask, return_trajectory=True)
    assert sample.shape == (b, p, n, D)
    torch.testing.assert_close(sample[:, :, 0], x0)


def test_llama_backbone_trains():
    m = make("llama-tiny", n_spatial_tokens=2, n_trajectories=2)
    ids, mask = prompt(2)
    loss = m.loss(torch.randn(2, 2, D), torch.randn(2, 2, D), ids, mask)
    loss.loss.backward()
    assert m.encoder[0].weight.grad is not None


def test_straight_paths_endpoints_and_noise():
    x0, x1 = torch.zeros(4, D), torch.ones(4, D)
    z = straight_paths(x0, x1, 5)
    torch.testing.assert_close(z[:, 2], torch.full((4, D), 0.5))
    noisy = straight_paths(x0, x1, 5, sigma=0.3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(noisy[:, 0], x0)
    torch.testing.assert_close(noisy[:, -1], x1)
    assert (noisy[:, 1:-1] - z[:, 1:-1]).abs().max() > 0.01
    with pytest.raises(ValueError, match="same shape"):
        straight_paths(x0, torch.ones(3, D), 5)


def test_minibatch_ot_pairs_shifted_points():
    x1 = torch.randn(16, 2) * 5
    perm = torch.randperm(16)
    x0 = x1[perm] + 0.01
    # x0[p] should be paired with x1: the OT permutation undoes the shuffle
    p = minibatch_ot_permutation(x0, x1)
    torch.testing.assert_close(x0[p], x1 + 0.01)


@pytest.mark.parametrize("k,p", [(1, 1), (2, 3)])
@pytest.mark.parametrize("with_prompt", [False, True])
def test_causality(k, p, with_prompt):
    """Changing the state at time i changes no prediction for steps <= i."""
    m = make(n_spatial_tokens=k, n_trajectories=p, n_time_points=6).eval()
    b = 2
    paths = m.make_paths(torch.randn(b, p, D), torch.randn(b, p, D))
    ids, mask = prompt(b) if with_prompt else (None, None)
    base = m(paths, ids, mask, temperature=0.0).prediction  # prediction[:, :, j] is the state at j+1
    for i in range(1, m.n_time_points - 1):
        changed = paths.clone()
        changed[:, :, i] += 10.0
        pred = m(changed, ids, mask, temperature=0.0).prediction
        # predictions of steps 1..i come from inputs at times 0..i-1
        torch.testing.assert_close(pred[:, :, :i], base[:, :, :i])
        assert (pred[:, :, i:] - base[:, :, i:]).abs().max() > 1e-4


def test_prompt_padding_does_not_shift_flow_tokens():
    m = make(n_spatial_tokens=2, n_trajectories=2).eval()
    paths = m.make_paths(torch.randn(1, 2, D), torch.randn(1, 2, D))
    ids = torch.randint(1, 16, (1, 3))
    alone = m(paths, ids, torch.ones_like(ids), temperature=0.0).prediction
    padded_ids = torch.cat([torch.zeros(1, 5, dtype=torch.long), ids], dim=1)
    padded_mask = torch.cat([torch.zeros(1, 5, dtype=torch.long), torch.ones_like(ids)], dim=1)
    padded = m(paths, padded_ids, padded_mask, temperature=0.0).prediction
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)
    # and the prompt matters
    other = m(paths, torch.randint(1, 16, (1, 3)), None, temperature=0.0).prediction
    assert (other - alone).abs().max() > 1e-5


@pytest.mark.parametrize("backbone", ["gpt2-tiny", "gpt-neox-tiny", "llama-tiny"])
@pytest.mark.parametrize("with_prompt", [False, True])
def test_cached_sampling_matches_reference(backbone, with_prompt):
    m = make(backbone, n_spatial_tokens=2, n_trajectories=3, n_time_points=6)
    x0 = torch.randn(4, 3, D)
    ids, mask = prompt(4) if with_prompt else (None, None)
    if with_prompt:
        mask[1, :2] = 0  # a left-padded row
    cached = m.sample(x0, ids, mask, generator=torch.Generator().manual_seed(7), use_cache=True, return_trajectory=True)
    ref = m.sample(x0, ids, mask, generator=torch.Generator().manual_seed(7), use_cache=False, return_trajectory=True)
    torch.testing.assert_close(cached, ref, atol=1e-4, rtol=1e-4)
    assert torch.isfinite(cached).all()
    other = m.sample(x0, ids, mask, generator=torch.Generator().manual_seed(8), return_trajectory=True)
    assert (other - cached).abs().max() > 1e-3


def test_sampling_restores_training_mode():
    m = make().train()
    m.sample(torch.randn(2, 1, D))
    assert m.training


def test_lora_trains_only_adapters_and_heads():
    m = make("gpt-neox-tiny", finetune="lora", lora_kwargs={"lora_rank": 4})
    names = m.trainable_parameter_names()
    assert any("lora_" in n for n in names)
    backbone_trainable = [n for n in names if n.startswith("backbone.") and "lora_" not in n]
    assert backbone_trainable == []
    for prefix in ("encoder.", "mu_head.", "logvar_head.", "decoder."):
        assert any(n.startswith(prefix) for n in names)
    frozen_before = {
        n: p.detach().clone() for n, p in m.named_parameters() if n.startswith("backbone.") and "lora_" not in n
    }
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):
        loss = m.loss(torch.randn(4, 1, D), torch.randn(4, 1, D), *prompt(4))
        opt.zero_grad()
        loss.loss.backward()
        opt.step()
    for n, p in m.named_parameters():
        if n in frozen_before:
            torch.testing.assert_close(p, frozen_before[n], msg=f"{n} changed")
    lora_b = [p for n, p in m.named_parameters() if "lora_B" in n]
    assert any(p.abs().max() > 0 for p in lora_b), "LoRA adapters did not train"


@pytest.mark.parametrize("backbone,expected", [("gpt2-tiny", "c_attn"), ("llama-tiny", "q_proj")])
def test_lora_default_targets_per_architecture(backbone, expected):
    base = build_backbone(backbone, vocab_size=16)
    peft_model = apply_finetuning(base, "lora")
    assert expected in peft_model.peft_config["default"].target_modules
    custom = apply_finetuning(
        build_backbone(backbone, vocab_size=16),
        "lora",
        target_modules=["mlp.c_fc"] if backbone == "gpt2-tiny" else ["up_proj"],
    )
    assert expected not in custom.peft_config["default"].target_modules


def test_saved_backbone_loads_by_path_and_trains(tmp_path):
    from transformers import AutoModelForCausalLM, GPTNeoXConfig

    config = GPTNeoXConfig(
        vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(config)
    lm.save_pretrained(tmp_path / "tiny-lm")
    m = CaLMFlowModule(D, str(tmp_path / "tiny-lm"), n_time_points=4, finetune="lora")
    torch.testing.assert_close(m.base_model.get_input_embeddings().weight, lm.get_input_embeddings().weight)
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-3)
    loss = m.loss(torch.randn(4, 1, D), torch.randn(4, 1, D), torch.randint(0, 32, (4, 3)))
    opt.zero_grad()
    loss.loss.backward()
    opt.step()
    assert torch.isfinite(loss.loss)


def test_unknown_backbone_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="neither a preset"):
        CaLMFlowModule(D, str(tmp_path / "no-such-model"))


def test_bad_shapes_are_clear_errors():
    m = make()
    with pytest.raises(ValueError, match="paths must have shape"):
        m(torch.randn(2, 1, 7, D))
    with pytest.raises(ValueError, match="x0 must have shape"):
        m.sample(torch.randn(2, D))
    with pytest.raises(ValueError, match="prompt_ids must have shape"):
        m(m.make_paths(torch.randn(2, 1, D), torch.randn(2, 1, D)), torch.ones(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="n_time_points"):
        CaLMFlowModule(D, "gpt-neox-tiny", n_time_points=1)


def test_training_lowers_loss_on_2d_task():
    from calmflow_sc.datasets import eight_gaussians

    torch.manual_seed(0)
    m = CaLMFlowModule(2, "gpt-neox-tiny", n_time_points=8, n_trajectories=2, dropout=0.0)
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for step in range(300):
        x1 = torch.from_numpy(eight_gaussians(128, seed=step)).view(64, 2, 2)
        x0 = torch.randn(64, 2, 2, generator=gen)
        out = m.loss(x0, x1)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.reconstruction.item())
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.5 * first, (first, last)


def test_residual_decoding_is_causal_and_cache_consistent():
    m = make(n_spatial_tokens=2, n_trajectories=2, n_time_points=5, residual=True).eval()
    x0 = torch.randn(3, 2, D)
    cached = m.sample(x0, generator=torch.Generator().manual_seed(1), return_trajectory=True)
    ref = m.sample(x0, generator=torch.Generator().manual_seed(1), use_cache=False, return_trajectory=True)
    torch.testing.assert_close(cached, ref, atol=1e-4, rtol=1e-4)
    paths = m.make_paths(x0, torch.randn(3, 2, D))
    base = m(paths, temperature=0.0).prediction
    changed = paths.clone()
    changed[:, :, 2] += 5.0
    pred = m(changed, temperature=0.0).prediction
    torch.testing.assert_close(pred[:, :, :2], base[:, :, :2])
    # with a zero decoder the residual module predicts "stay where you are"
    torch.nn.init.zeros_(m.decoder[-1].weight)
    torch.nn.init.zeros_(m.decoder[-1].bias)
    torch.testing.assert_close(m(paths, temperature=0.0).prediction, paths[:, :, :-1])


@pytest.mark.parametrize("n_time_points", [3, 9])
def test_residual_module_decodes_velocities_and_scores_them_in_velocity_units(n_time_points):
    m = make(n_time_points=n_time_points, residual=True, beta=0.0).eval()
    velocity = torch.linspace(-1.0, 1.0, D)
    torch.nn.init.zeros_(m.decoder[-1].weight)
    with torch.no_grad():
        m.decoder[-1].bias.copy_(velocity)  # the decoder outputs this velocity whatever the latent
    x0 = torch.randn(4, 1, D)
    final = m.sample(x0, temperature=1.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(final, x0 + velocity)  # N - 1 steps of dt * v reach x0 + v for any N
    exact = m.loss(x0, x0 + velocity)
    assert exact.reconstruction.item() < 1e-8
    off = m.loss(x0, x0 + velocity + 0.5)  # a velocity error of 0.5 in every dimension, whatever N
    torch.testing.assert_close(off.reconstruction, torch.tensor(0.25 * D), rtol=1e-4, atol=1e-4)
