"""Condition tokenizer for randomly initialised backbones, trained offline with `tokenizers`.

Every context value and every single perturbation is one token, so a combination of seen
parts ("KLF1 + MAP2K6") is expressible even if never seen together.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, UNK = "[PAD]", "[UNK]"
PUNCTUATION = (":", ".", "+")


def train_condition_tokenizer(words: Iterable[str]) -> PreTrainedTokenizerFast:
    """Build a word-level tokenizer whose vocabulary is the condition vocabulary.

    Each word (which may contain spaces or punctuation, e.g. ``"cell type"`` or ``"1+1"``) is an
    added token matched whole; the rest of the prompt splits on whitespace and punctuation.

    Parameters
    ----------
    words
        Whole words that prompts contain (labels, context values, perturbation parts).

    Returns
    -------
    A left-padding ``PreTrainedTokenizerFast`` (saved with ``save_pretrained``).
    """
    vocab = {PAD: 0, UNK: 1}
    for symbol in PUNCTUATION:
        vocab[symbol] = len(vocab)
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    unique = sorted({w.strip() for w in words if w.strip()} - set(vocab))
    # longest first is not needed: the added-token matcher prefers the longest match
    tokenizer.add_tokens([AddedToken(w, single_word=True, normalized=False) for w in unique])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token=UNK, pad_token=PAD, padding_side="left")


def prepare_pretrained_tokenizer(tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """Make a pretrained model's tokenizer pad on the left, adding a pad token if it has none.

    Parameters
    ----------
    tokenizer
        The backbone's own tokenizer.

    Returns
    -------
    The same tokenizer, configured for left-padded batches of prompts.
    """
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer
