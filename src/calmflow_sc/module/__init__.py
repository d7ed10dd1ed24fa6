"""The CaLMFlow torch module: tensors and token ids in, trajectories out (no AnnData)."""

from calmflow_sc.module.backbone import (
    BACKBONE_PRESETS,
    LORA_TARGET_MODULES,
    BackbonePreset,
    apply_finetuning,
    build_backbone,
)
from calmflow_sc.module.calmflow import CaLMFlowLoss, CaLMFlowModule, CaLMFlowOutput
from calmflow_sc.module.paths import minibatch_ot_permutation, straight_paths, time_grid

__all__ = [
    "BACKBONE_PRESETS",
    "LORA_TARGET_MODULES",
    "BackbonePreset",
    "CaLMFlowLoss",
    "CaLMFlowModule",
    "CaLMFlowOutput",
    "apply_finetuning",
    "build_backbone",
    "minibatch_ot_permutation",
    "straight_paths",
    "time_grid",
]
