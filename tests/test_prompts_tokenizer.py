"""Prompt builder, condition tokenizer and sequence grouping (property-based where it pays)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from calmflow_sc.data import (
    ConditionCoupling,
    ControlPool,
    PromptBuilder,
    group_into_sequences,
    train_condition_tokenizer,
)

gene = st.from_regex(r"[A-Z][A-Z0-9\-]{0,7}", fullmatch=True)


@settings(max_examples=40, deadline=None)
@given(parts=st.lists(gene, min_size=1, max_size=3, unique=True), cell=st.sampled_from(["k562", "T cell", "A172"]))
def test_unseen_combination_of_seen_parts_round_trips(parts, cell):
    builder = PromptBuilder(("cell_type",))
    # the vocabulary only ever saw the parts one at a time
    tokenizer = train_condition_tokenizer(builder.words(parts, {"cell_type": ["k562", "T cell", "A172"]}))
    combo = "+".join(reversed(parts))
    text = builder.build(combo, {"cell_type": cell})
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert [t for t in tokens if t in parts] == sorted(parts)  # one token per part, canonical order
    assert cell in tokens
    assert builder.build("+".join(parts), {"cell_type": cell}) == text


def test_prompt_text_and_errors():
    builder = PromptBuilder(("cell_type", "dose"))
    assert builder.build("B+A", {"cell_type": "k562", "dose": "1+1"}) == (
        "cell type: k562. dose: 1+1. perturbation: A + B."
    )
    assert builder.build("control", {"cell_type": "k562", "dose": "1"}).endswith("perturbation: control.")
    with pytest.raises(KeyError, match="dose"):
        builder.build("A", {"cell_type": "k562"})
    with pytest.raises(ValueError, match="empty part"):
        builder.parts("A++B")


def test_unknown_word_becomes_unk():
    tokenizer = train_condition_tokenizer(["perturbation", "KLF1"])
    ids = tokenizer("perturbation: KLF10.")["input_ids"]
    assert tokenizer.unk_token_id in ids


@settings(max_examples=50, deadline=None)
@given(keys=st.lists(st.integers(0, 4), min_size=1, max_size=60), p=st.integers(1, 5))
def test_grouping_keeps_conditions_together_and_covers_rows(keys, p):
    keys_t = torch.tensor(keys)
    seq = group_into_sequences(keys_t, p, generator=torch.Generator().manual_seed(0))
    assert seq.shape[1] == p
    assert (keys_t[seq] == keys_t[seq[:, :1]]).all()
    assert set(seq.flatten().tolist()) == set(range(len(keys)))


def test_control_pool_draws_from_the_right_context():
    coords = torch.arange(12, dtype=torch.float32).view(6, 2).numpy()
    pool = ControlPool(coords, contexts=[1, 0, 1, 0, 1, 1])
    drawn, _ = pool.sample(torch.tensor([0, 0, 1, 1, 1]), generator=torch.Generator().manual_seed(0))
    assert set(drawn[:2, 0].tolist()) <= {2.0, 6.0}
    assert set(drawn[2:, 0].tolist()) <= {0.0, 4.0, 8.0, 10.0}
    with pytest.raises(ValueError, match="no control cells"):
        pool.sample(torch.tensor([2]))
    targets = torch.randn(4, 2, 2)
    sources = pool.sources_for(targets, torch.tensor([1, 1, 0, 0]), generator=torch.Generator().manual_seed(0))
    assert sources.shape == targets.shape
    assert set(sources[2:, :, 0].flatten().tolist()) <= {2.0, 6.0}


def _shifted_screen(n=30, d=3, seed=0):
    """Controls of two contexts, and per context two conditions that shift that context's controls."""
    rng = np.random.default_rng(seed)
    controls = rng.normal(size=(2 * n, d)).astype(np.float32)
    control_context = np.repeat([0, 1], n)
    shifts = {0: np.full(d, 4.0), 1: np.full(d, -3.0)}
    targets, groups, contexts = [], [], []
    for context in (0, 1):
        for condition in (0, 1):
            targets.append(controls[control_context == context] + shifts[condition])
            groups += [2 * condition + context] * n
            contexts += [context] * n
    return ControlPool(controls, control_context), np.concatenate(targets), np.array(groups), np.array(contexts)


def test_condition_coupling_recovers_a_pure_shift_and_never_crosses_conditions():
    pool, targets, groups, contexts = _shifted_screen()
    rows = np.arange(len(targets)) + 7  # AnnData rows need not start at 0
    coupling = ConditionCoupling(rows, targets, groups, source="control", contexts=contexts, control_pool=pool)
    coupling.resample(torch.Generator().manual_seed(0))
    sources = coupling.sources_of(torch.as_tensor(rows)).numpy()
    # each condition draws its whole context's pool without replacement, and OT undoes the shift exactly
    for g in np.unique(groups):
        in_group = groups == g
        context_controls = pool.coordinates[torch.as_tensor(pool.contexts == contexts[in_group][0])].numpy()
        assert sorted(map(tuple, sources[in_group].round(5))) == sorted(map(tuple, context_controls.round(5)))
    expected = np.where(groups // 2 == 0, 4.0, -3.0)[:, None] * np.ones_like(targets)
    np.testing.assert_allclose(targets - sources, expected, atol=1e-5)
    # a random pairing of the same sources is far from that
    shuffled = sources[np.random.default_rng(1).permutation(len(sources))]
    assert np.abs(targets - shuffled - expected).max() > 1.0


def test_condition_coupling_blocks_noise_and_unknown_rows():
    _, targets, groups, _ = _shifted_screen(n=25)
    rows = np.arange(len(targets))
    coupling = ConditionCoupling(rows, targets, groups, source="noise", block_size=8)
    coupling.resample(torch.Generator().manual_seed(0))
    first = coupling.sources_of(torch.as_tensor(rows).view(10, 10)).clone()
    assert first.shape == (10, 10, targets.shape[1]) and torch.isfinite(first).all()
    coupling.resample(torch.Generator().manual_seed(0))
    torch.testing.assert_close(coupling.sources_of(torch.as_tensor(rows).view(10, 10)), first)  # seeded: repeatable
    coupling.resample(torch.Generator().manual_seed(1))
    assert not torch.equal(coupling.sources_of(torch.as_tensor(rows).view(10, 10)), first)  # re-drawn each epoch
    # blocks of 8 within each condition: sources are closer to their cells than a random assignment
    paired = ((coupling.sources - coupling.targets) ** 2).sum(1).mean()
    shuffled = ((coupling.sources[torch.randperm(len(rows))] - coupling.targets) ** 2).sum(1).mean()
    assert paired < shuffled
    with pytest.raises(IndexError, match="not built for"):
        coupling.sources_of(torch.tensor([len(rows) + 3]))
    partial = ConditionCoupling(rows[:10] * 2, targets[:10], groups[:10], source="noise")
    with pytest.raises(IndexError, match="not built for"):
        partial.sources_of(torch.tensor([1]))
    with pytest.raises(ValueError, match="control pool"):
        ConditionCoupling(rows, targets, groups, source="control")


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 4), p=st.integers(1, 3), k=st.integers(1, 3), sigma=st.sampled_from([0.0, 0.1]))
def test_token_interleaving_is_time_then_trajectory_then_spatial(n, p, k, sigma):
    from calmflow_sc.module import CaLMFlowModule, straight_paths

    module = CaLMFlowModule(1, "gpt-neox-tiny", n_spatial_tokens=k, n_trajectories=p, n_time_points=max(n, 2))
    hidden = module.hidden_size

    class LabelTokens(torch.nn.Module):  # state value v -> K tokens filled with 10 * v + k
        def forward(self, states):
            return 10 * states + torch.arange(k, dtype=states.dtype).repeat_interleave(hidden)

    module.encoder = LabelTokens()
    times, trajs = torch.meshgrid(torch.arange(n), torch.arange(p), indexing="ij")
    states = (100 * times + trajs).float().view(1, n, p, 1)
    tokens = module.encode_states(states)[0, :, 0]
    expected = [10 * (100 * i + j) + s for i in range(n) for j in range(p) for s in range(k)]
    assert tokens.tolist() == expected  # position = i * (P * K) + p * K + k
    # and paths keep their endpoints whatever the noise
    x0, x1 = torch.randn(2, p, 3), torch.randn(2, p, 3)
    z = straight_paths(x0, x1, max(n, 2), sigma=sigma)
    torch.testing.assert_close(z[..., 0, :], x0)
    torch.testing.assert_close(z[..., -1, :], x1)
