"""Condition text: turning a perturbation and its context into a prompt."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


def context_label(key: str) -> str:
    """Human-readable label of an obs column for prompts (``"cell_type"`` -> ``"cell type"``).

    Parameters
    ----------
    key
        obs column name.

    Returns
    -------
    The label used in the prompt.
    """
    return " ".join(key.replace("_", " ").split())


@dataclass(frozen=True)
class PromptBuilder:
    """Build the text prompt of a perturbation in its context.

    For example ``"cell type: K562. perturbation: KLF1 + MAP2K6."``. The parts of a combination
    are sorted, so ``"B+A"`` and ``"A+B"`` give the same prompt.

    Parameters
    ----------
    context_keys
        obs columns whose values precede the perturbation in the prompt, in this order.
    control_value
        Label of unperturbed cells (a condition with no parts).
    delimiter
        String separating the parts of a combination in the perturbation column.
    """

    context_keys: tuple[str, ...] = ()
    control_value: str = "control"
    delimiter: str = "+"
    perturbation_label: str = field(default="perturbation")

    def parts(self, perturbation: str) -> list[str]:
        """Split a perturbation into its sorted parts (empty for the control).

        Parameters
        ----------
        perturbation
            A perturbation as written in the perturbation column (e.g. ``"KLF1+MAP2K6"``).

        Returns
        -------
        Sorted list of stripped part names; ``[]`` for the control label.
        """
        if not isinstance(perturbation, str):
            raise TypeError(f"perturbation must be a string, got {perturbation!r} ({type(perturbation).__name__}).")
        text = perturbation.strip()
        if text == self.control_value:
            return []
        pieces = [p.strip() for p in text.split(self.delimiter)]
        if not text or any(not p for p in pieces):
            raise ValueError(f"perturbation {perturbation!r} has an empty part (delimiter {self.delimiter!r}).")
        return sorted(pieces)

    def canonical(self, perturbation: str) -> str:
        """Canonical spelling of a perturbation: sorted parts joined by the delimiter.

        Parameters
        ----------
        perturbation
            A perturbation name.

        Returns
        -------
        ``control_value`` for the control, else the sorted parts joined by ``delimiter``.
        """
        parts = self.parts(perturbation)
        return self.delimiter.join(parts) if parts else self.control_value

    def build(self, perturbation: str, context: Mapping[str, str] | None = None) -> str:
        """Prompt text for one condition.

        Parameters
        ----------
        perturbation
            Perturbation name (parts joined by the delimiter, or the control label).
        context
            Value of every context key.

        Returns
        -------
        The prompt, e.g. ``"cell type: K562. perturbation: KLF1 + MAP2K6."``.
        """
        context = dict(context or {})
        missing = [k for k in self.context_keys if k not in context]
        if missing:
            raise KeyError(f"context is missing value(s) for {missing}; context keys are {list(self.context_keys)}.")
        segments = [f"{context_label(k)}: {str(context[k]).strip()}." for k in self.context_keys]
        parts = self.parts(perturbation)
        body = " + ".join(parts) if parts else self.control_value
        segments.append(f"{self.perturbation_label}: {body}.")
        return " ".join(segments)

    def words(self, perturbations: Sequence[str], contexts: Mapping[str, Sequence[str]]) -> list[str]:
        """Every whole word a prompt over these conditions can contain (for the tokenizer).

        Parameters
        ----------
        perturbations
            Perturbation names (parts are extracted).
        contexts
            For each context key, its possible values.

        Returns
        -------
        Sorted unique words: labels, context values, perturbation parts and the control label.
        """
        words = {self.perturbation_label, self.control_value}
        for key in self.context_keys:
            words.add(context_label(key))
            words.update(str(v).strip() for v in contexts.get(key, ()))
        for pert in perturbations:
            words.update(self.parts(pert))
        return sorted(words)
