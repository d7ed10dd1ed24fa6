"""Hugging Face backbones for CaLMFlow: named small configs, local/hub checkpoints, LoRA."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

logger = logging.getLogger(__name__)

FinetuneMode = Literal["full", "lora", "frozen"]


@dataclass(frozen=True)
class BackbonePreset:
    """A small randomly initialised backbone described by a config.

    Attributes
    ----------
    model_type
        Hugging Face ``model_type`` (``"gpt_neox"``, ``"gpt2"``, ``"llama"``).
    hidden_size
        Width ``H`` of the token embeddings.
    n_layers
        Number of transformer blocks.
    n_heads
        Number of attention heads.
    """

    model_type: str
    hidden_size: int
    n_layers: int
    n_heads: int

    def to_config(self, vocab_size: int, max_positions: int) -> PretrainedConfig:
        """Build the Hugging Face config for this preset.

        Parameters
        ----------
        vocab_size
            Size of the token-embedding table (the condition tokenizer's vocabulary).
        max_positions
            Longest sequence the backbone must accept (prompt plus flow tokens).

        Returns
        -------
        A ``PretrainedConfig`` for ``AutoModel.from_config``.
        """
        common = {"vocab_size": vocab_size, "bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
        h, n, k = self.hidden_size, self.n_layers, self.n_heads
        if self.model_type == "gpt2":
            return AutoConfig.for_model(
                "gpt2", n_embd=h, n_layer=n, n_head=k, n_positions=max_positions, n_inner=4 * h, **common
            )
        if self.model_type == "gpt_neox":
            return AutoConfig.for_model(
                "gpt_neox",
                hidden_size=h,
                num_hidden_layers=n,
                num_attention_heads=k,
                intermediate_size=4 * h,
                max_position_embeddings=max_positions,
                **common,
            )
        if self.model_type == "llama":
            return AutoConfig.for_model(
                "llama",
                hidden_size=h,
                num_hidden_layers=n,
                num_attention_heads=k,
                num_key_value_heads=k,
                intermediate_size=4 * h,
                max_position_embeddings=max_positions,
                **common,
            )
        raise ValueError(f"unknown preset model_type {self.model_type!r}")


#: Named randomly initialised backbones. ``gpt-neox-small`` is the package default.
BACKBONE_PRESETS: dict[str, BackbonePreset] = {
    "gpt-neox-tiny": BackbonePreset("gpt_neox", 32, 2, 2),
    "gpt-neox-mini": BackbonePreset("gpt_neox", 64, 2, 2),
    "gpt-neox-small": BackbonePreset("gpt_neox", 128, 2, 4),
    "gpt-neox-base": BackbonePreset("gpt_neox", 256, 4, 8),
    "gpt2-tiny": BackbonePreset("gpt2", 32, 2, 2),
    "gpt2-small": BackbonePreset("gpt2", 128, 2, 4),
    "llama-tiny": BackbonePreset("llama", 32, 2, 2),
    "llama-small": BackbonePreset("llama", 128, 2, 4),
}

#: LoRA target modules (the attention projections) per architecture. Architectures not
#: listed fall back to peft's own per-architecture defaults.
LORA_TARGET_MODULES: dict[str, list[str]] = {
    "gpt2": ["c_attn"],
    "gpt_neox": ["query_key_value", "dense"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
}


def build_backbone(
    backbone: str | PretrainedConfig | PreTrainedModel,
    *,
    vocab_size: int = 64,
    max_positions: int = 2048,
    from_pretrained_kwargs: dict[str, Any] | None = None,
) -> PreTrainedModel:
    """Build the base (headless) transformer used as the CaLMFlow solver.

    Parameters
    ----------
    backbone
        One of :data:`BACKBONE_PRESETS` (randomly initialised), a ``PretrainedConfig``
        (randomly initialised from it), an instantiated ``PreTrainedModel``, or a local
        folder / Hugging Face hub id loaded with ``AutoModel.from_pretrained``.
    vocab_size
        Vocabulary size for presets (ignored for pretrained models, which bring their own).
    max_positions
        Maximum sequence length for presets.
    from_pretrained_kwargs
        Extra keyword arguments for ``AutoModel.from_pretrained`` (e.g. ``local_files_only``,
        ``revision``, ``torch_dtype``).

    Returns
    -------
    The base model (no language-modelling head), in float32 unless asked otherwise.
    """
    if isinstance(backbone, PreTrainedModel):
        model = backbone
    elif isinstance(backbone, PretrainedConfig):
        model = AutoModel.from_config(backbone, attn_implementation="sdpa")
    elif isinstance(backbone, str) and backbone in BACKBONE_PRESETS:
        config = BACKBONE_PRESETS[backbone].to_config(vocab_size=vocab_size, max_positions=max_positions)
        model = AutoModel.from_config(config, attn_implementation="sdpa")
    elif isinstance(backbone, str):
        kwargs = dict(from_pretrained_kwargs or {})
        try:
            model = AutoModel.from_pretrained(backbone, **kwargs)
        except OSError as err:
            known = ", ".join(sorted(BACKBONE_PRESETS))
            raise ValueError(
                f"backbone {backbone!r} is neither a preset ({known}) nor a loadable local folder or "
                f"cached Hugging Face model: {err}"
            ) from err
    else:
        raise TypeError(f"backbone must be a str, PretrainedConfig or PreTrainedModel, got {type(backbone)}")
    # A causal-LM checkpoint may load as a wrapper; we drive the base model through inputs_embeds.
    base = getattr(model, "base_model", model)
    return base


def backbone_max_positions(config: PretrainedConfig) -> int | None:
    """Return the longest sequence a backbone config accepts, or ``None`` if unbounded.

    Parameters
    ----------
    config
        The backbone's Hugging Face config.

    Returns
    -------
    ``n_positions`` / ``max_position_embeddings`` where the architecture defines one.
    """
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def apply_finetuning(
    backbone: PreTrainedModel,
    mode: FinetuneMode = "full",
    *,
    lora_rank: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.05,
    target_modules: Sequence[str] | None = None,
) -> torch.nn.Module:
    """Set how the backbone is trained: all weights, LoRA adapters only, or not at all.

    Parameters
    ----------
    backbone
        Base model from :func:`build_backbone`.
    mode
        ``"full"`` trains every weight; ``"lora"`` freezes the backbone and adds peft LoRA
        adapters; ``"frozen"`` trains nothing in the backbone.
    lora_rank, lora_alpha, lora_dropout
        LoRA hyper-parameters (``r``, ``lora_alpha``, ``lora_dropout`` of ``peft.LoraConfig``).
    target_modules
        Module names to adapt; defaults to the attention projections listed in
        :data:`LORA_TARGET_MODULES` for the architecture, else peft's defaults.

    Returns
    -------
    The backbone (a ``peft.PeftModel`` in LoRA mode).
    """
    if mode == "full":
        backbone.requires_grad_(True)
        return backbone
    if mode == "frozen":
        backbone.requires_grad_(False)
        return backbone
    if mode != "lora":
        raise ValueError(f"finetune must be 'full', 'lora' or 'frozen', got {mode!r}")
    from peft import LoraConfig, get_peft_model

    model_type = backbone.config.model_type
    targets = list(target_modules) if target_modules is not None else LORA_TARGET_MODULES.get(model_type)
    config = LoraConfig(
        r=lora_rank,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=targets,
        fan_in_fan_out=model_type == "gpt2",
    )
    logger.info("LoRA on %s, target modules %s", model_type, config.target_modules)
    return get_peft_model(backbone, config)
