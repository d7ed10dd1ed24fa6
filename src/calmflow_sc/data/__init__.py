"""AnnData -> tensors: prompts, condition tokenizer, representation, sequences and sources."""

from calmflow_sc.data.coupling import ConditionCoupling
from calmflow_sc.data.expression import check_expression, log_normalize, looks_like_counts
from calmflow_sc.data.prompts import PromptBuilder, context_label
from calmflow_sc.data.representation import PCARepresentation
from calmflow_sc.data.sequences import ControlPool, group_into_sequences
from calmflow_sc.data.tokenizer import prepare_pretrained_tokenizer, train_condition_tokenizer

__all__ = [
    "ConditionCoupling",
    "ControlPool",
    "PCARepresentation",
    "PromptBuilder",
    "check_expression",
    "context_label",
    "group_into_sequences",
    "log_normalize",
    "looks_like_counts",
    "prepare_pretrained_tokenizer",
    "train_condition_tokenizer",
]
