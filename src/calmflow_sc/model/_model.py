"""``CaLMFlowModel``: the scvi-tools-style user object on AnnData."""

from __future__ import annotations

import itertools
import logging
import signal
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData
from lightning.pytorch.trainer.states import TrainerStatus
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import CategoricalJointObsField, CategoricalObsField, LayerField, NumericalObsField
from scvi.dataloaders import DataSplitter
from scvi.model._utils import use_distributed_sampler
from scvi.model.base import BaseModelClass
from scvi.train import TrainRunner
from tqdm.auto import tqdm

from calmflow_sc import __version__
from calmflow_sc.data.coupling import ConditionCoupling
from calmflow_sc.data.expression import log_normalize, looks_like_counts
from calmflow_sc.data.prompts import PromptBuilder
from calmflow_sc.data.representation import PCARepresentation, iter_row_chunks
from calmflow_sc.data.sequences import ControlPool, Pairing
from calmflow_sc.data.tokenizer import prepare_pretrained_tokenizer, train_condition_tokenizer
from calmflow_sc.model._training_plan import CONTEXT_KEY, PERTURBATION_KEY, CaLMFlowTrainingPlan
from calmflow_sc.model._validation import (
    BACKED_CHUNK,
    _preview,
    check_expression_source,
    check_obs_column,
    check_perturbations,
    held_out_mask,
)
from calmflow_sc.module import BACKBONE_PRESETS, CaLMFlowModule

logger = logging.getLogger(__name__)

Source = Literal["noise", "control"]


class _SourceDraw(NamedTuple):
    """Sources of one prediction request."""

    perturbation: str
    context: dict[str, str]
    coordinates: torch.Tensor
    names: np.ndarray | None
    residuals: np.ndarray | None


OBSM_KEY = "X_calmflow"
#: obs column holding each cell's row number, registered so that batches say which cells they hold.
INDEX_COLUMN = "_calmflow_index"
#: Above this many matrix entries (cells x genes) the PCA is fitted streaming, chunk by chunk.
STREAMING_PCA_ELEMENTS = 2**27
UNS_KEY = "calmflow"


class CaLMFlowModel(BaseModelClass):
    """CaLMFlow on AnnData: generate cells for text conditions, predict unseen perturbations.

    Cells live in a PCA space fitted on the training cells; each cell is the end point of a
    flow from a source (standard-normal noise, or a control cell of the same context) that a
    causal language model rolls out over ``n_time_points`` steps, conditioned on a prompt such
    as ``"cell type: K562. perturbation: KLF1 + MAP2K6."``.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    n_components
        Dimension of the PCA representation.
    backbone
        A preset name (see :data:`calmflow_sc.module.BACKBONE_PRESETS`; randomly initialised,
        with a condition tokenizer trained on the data), or a local folder / Hugging Face id of a
        pretrained causal LM (loaded offline-first with its own tokenizer).
    source
        Where flows start: ``"noise"`` (the paper) or ``"control"`` (a control cell of the same
        context, so predictions are counterfactuals of real cells).
    pairing
        Pairing of sources with training cells: ``"ot"`` couples every cell with a source (noise, or
        a control cell of its context) by exact optimal transport over all the training and
        validation cells of its condition, re-drawn every epoch (:class:`~calmflow_sc.data.ConditionCoupling`);
        ``"random"`` draws independent sources per batch (the paper). Teacher forcing on a straight
        path reveals its target after one step, so with random pairing the first step must guess
        the target and the generated cells collapse towards the condition's mean; OT pairing makes
        the target predictable from the source.
    n_spatial_tokens
        ``K``, tokens per state.
    n_trajectories
        ``P``, trajectories of the same condition per sequence.
    n_time_points
        ``N``, points of the time grid.
    beta
        KL weight of the variational decoder. The paper uses 0.3 for single cells; 0.03 is the
        default here: on the held-out Norman doubles it matched 0.003 and beat 0.3 where both
        singles were seen, and beat both on the double with one single seen
        (``benchmarks/results/norman_combos_explorations.md``).
    temperature
        Default sampling temperature of predictions.
    finetune
        ``"full"``, ``"lora"`` or ``"frozen"`` backbone training.
    residual
        Decode velocities ``(z_{i+1} - z_i) / dt`` rather than states (see
        :class:`~calmflow_sc.module.CaLMFlowModule`).
    lora_kwargs
        LoRA options (``lora_rank``, ``lora_alpha``, ``lora_dropout``, ``target_modules``).
    from_pretrained_kwargs
        Extra arguments for ``from_pretrained`` of a pretrained backbone and its tokenizer.
    representation_key
        Use an existing PCA instead of fitting one: an ``obsm`` key (e.g. ``"X_pca"`` from
        ``sc.pp.pca``) whose loadings are in ``adata.varm["PCs"]``; ``n_components`` is then taken
        from it. The per-gene mean is recomputed on the training cells.
    registry
        A saved registry to build the model without AnnData (used by :meth:`load`).
    tokenizer
        A tokenizer to use instead of training one (presets) or loading the backbone's.
    **module_kwargs
        Further :class:`~calmflow_sc.module.CaLMFlowModule` options (``latent_dim``, ``dropout``,
        ``path_sigma``, ``encoder_hidden``, ``decoder_hidden``).

    Examples
    --------
    >>> cf.CaLMFlowModel.setup_anndata(adata, perturbation_key="condition", context_keys=["cell_type"])
    >>> model = cf.CaLMFlowModel(adata, source="control")
    >>> model.train(max_epochs=20, held_out={"condition": ["KLF1+MAP2K6"]})
    >>> pred = model.predict_perturbation("KLF1+MAP2K6", context={"cell_type": "k562"}, n_cells=200)
    """

    _training_plan_cls = CaLMFlowTrainingPlan
    _data_splitter_cls = DataSplitter
    _train_runner_cls = TrainRunner

    def __init__(
        self,
        adata: AnnData | None = None,
        n_components: int = 50,
        backbone: str = "gpt-neox-small",
        source: Source = "noise",
        *,
        pairing: Pairing = "ot",
        n_spatial_tokens: int = 1,
        n_trajectories: int = 4,
        n_time_points: int = 16,
        beta: float = 0.03,
        temperature: float = 1.0,
        finetune: Literal["full", "lora", "frozen"] = "full",
        residual: bool = True,
        lora_kwargs: dict[str, Any] | None = None,
        from_pretrained_kwargs: dict[str, Any] | None = None,
        representation_key: str | None = None,
        registry: dict | None = None,
        tokenizer: Any = None,
        **module_kwargs: Any,
    ) -> None:
        super().__init__(adata, registry=registry)
        if source not in ("noise", "control"):
            raise ValueError(f"source must be 'noise' or 'control', got {source!r}.")
        if pairing not in ("random", "ot"):
            raise ValueError(f"pairing must be 'random' or 'ot', got {pairing!r}.")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}.")
        setup = self.registry_["setup_args"]
        self.perturbation_key_: str = setup["perturbation_key"]
        self.control_value_: str = setup["control_value"]
        self.context_keys_: list[str] = list(setup["context_keys"] or [])
        self.prompts = PromptBuilder(tuple(self.context_keys_), self.control_value_, setup["combination_delimiter"])
        self.perturbation_categories_: list[str] = [
            str(c) for c in self._state_registry(PERTURBATION_KEY)["categorical_mapping"]
        ]
        mappings = self._state_registry(CONTEXT_KEY).get("mappings", {}) if self.context_keys_ else {}
        self.context_categories_: dict[str, list[str]] = {k: [str(v) for v in mappings[k]] for k in self.context_keys_}
        self.representation_key = representation_key
        if registry is None and representation_key is not None:
            n_components = self._check_representation_key(self.adata, representation_key)
        if registry is None:
            self.var_names_ = np.asarray(self.adata.var_names.astype(str))
            matrix = self._expression_matrix(self.adata)
            self.normalize_counts_ = looks_like_counts(matrix[:1000] if not sp.issparse(matrix) else matrix)
            if source == "control":
                self._check_controls_per_context(self.adata)
        self.source = source
        self.pairing = pairing
        self.temperature = float(temperature)
        self.backbone_name_ = str(backbone)
        self.pretrained_backbone_ = not (isinstance(backbone, str) and backbone in BACKBONE_PRESETS)
        self.tokenizer = tokenizer if tokenizer is not None else self._make_tokenizer(backbone, from_pretrained_kwargs)
        self.module = CaLMFlowModule(
            n_components,
            backbone,
            n_spatial_tokens=n_spatial_tokens,
            n_trajectories=n_trajectories,
            n_time_points=n_time_points,
            beta=beta,
            vocab_size=len(self.tokenizer),
            finetune=finetune,
            residual=residual,
            lora_kwargs=lora_kwargs,
            from_pretrained_kwargs=from_pretrained_kwargs,
            **module_kwargs,
        )
        self.representation_: dict | None = None
        self.control_pool_: dict | None = None
        self.known_parts_: list[str] | None = None
        self.known_context_: dict[str, list[str]] | None = None
        self.held_out_: dict[str, Any] | None = None
        self.optimizer_state_: dict[str, Any] | None = None
        self.epochs_trained_ = 0
        self._model_summary_string = (
            f"CaLMFlowModel: backbone={backbone!r} ({finetune}), source={source!r}, n_components={n_components}, "
            f"K={n_spatial_tokens}, P={n_trajectories}, N={n_time_points}, beta={beta}"
        )
        self.init_params_ = self._get_init_params(locals())
        self.init_params_["non_kwargs"].pop("tokenizer", None)

    # ================================================================== setup
    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        perturbation_key: str,
        control_value: str = "control",
        context_keys: Sequence[str] | None = None,
        combination_delimiter: str = "+",
        layer: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Register the expression source, perturbation column, control label and prompt context.

        Everything is validated before anything is registered. Counts (non-negative integers)
        are detected and log-normalised on the fly (``log1p(normalize_total(1e4))``); the
        user's matrix is never modified.

        Parameters
        ----------
        adata
            AnnData with log-normalised ``X`` (or counts / log-normalised data in ``layer``). It may be
            opened backed (``anndata.read_h5ad(path, backed="r")``): ``X`` is then validated, fitted
            and trained on a chunk / minibatch at a time, straight from the file.
        perturbation_key
            obs column with the perturbation of each cell (combinations joined by the delimiter).
        control_value
            Label of unperturbed cells in ``perturbation_key``.
        context_keys
            obs columns that become prompt context (cell type, dose, time, ...).
        combination_delimiter
            Separator of the parts of a combination (``"KLF1+MAP2K6"``).
        layer
            Layer to use instead of ``X``.
        **kwargs
            Passed to :meth:`scvi.data.AnnDataManager.register_fields`.

        Notes
        -----
        Besides scvi-tools' ``_scvi_*`` columns, registration adds ``obs['_calmflow_index']`` (the
        row number of each cell, as scvi-tools models such as MrVI do), so that training batches
        carry which cells they hold and each cell keeps the source it was coupled with.
        """
        setup_method_args = cls._get_setup_method_args(**locals())
        if not isinstance(adata, AnnData):
            raise TypeError(f"adata must be an AnnData, got {type(adata).__name__}.")
        if adata.is_view:
            raise ValueError(
                "adata is a view (e.g. adata[mask]); setup registers keys on the object, so pass a copy: "
                "adata = adata[mask].copy()."
            )
        if not isinstance(combination_delimiter, str) or not combination_delimiter.strip():
            raise ValueError(f"combination_delimiter must be a non-blank string, got {combination_delimiter!r}.")
        if not isinstance(control_value, str) or not control_value.strip():
            raise ValueError(f"control_value must be a non-blank string, got {control_value!r}.")
        context_keys = [context_keys] if isinstance(context_keys, str) else list(context_keys or [])
        if perturbation_key in context_keys:
            raise ValueError(f"perturbation_key {perturbation_key!r} cannot also be a context key.")
        if len(set(context_keys)) != len(context_keys):
            raise ValueError(f"context_keys has duplicates: {context_keys}.")
        setup_method_args["setup_args"]["context_keys"] = context_keys or None
        perturbations = check_obs_column(adata, perturbation_key, role="perturbation_key")
        check_perturbations(
            perturbations, key=perturbation_key, control_value=control_value, delimiter=combination_delimiter
        )
        for key in context_keys:
            check_obs_column(adata, key, role="context_keys")
        check_expression_source(adata, layer)
        matrix = adata.X if layer is None else adata.layers[layer]
        if looks_like_counts(matrix[:BACKED_CHUNK] if adata.isbacked else matrix):
            logger.info(
                "%s looks like counts: it will be log-normalised (log1p, total 1e4) on the fly.",
                "adata.X" if layer is None else f"layer {layer!r}",
            )
        adata.obs[INDEX_COLUMN] = np.arange(adata.n_obs, dtype=np.int64)
        fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=False),
            CategoricalObsField(PERTURBATION_KEY, perturbation_key),
            NumericalObsField(REGISTRY_KEYS.INDICES_KEY, INDEX_COLUMN),
        ]
        if context_keys:
            fields.append(CategoricalJointObsField(CONTEXT_KEY, context_keys))
        adata_manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    # ================================================================ helpers
    def _state_registry(self, key: str) -> dict:
        return self.registry_["field_registries"].get(key, {}).get("state_registry", {})

    def _expression_matrix(self, adata: AnnData):
        layer = self.registry_["setup_args"]["layer"]
        return adata.X if layer is None else adata.layers[layer]

    @staticmethod
    def _check_representation_key(adata: AnnData, key: str) -> int:
        if key not in adata.obsm:
            raise KeyError(f"representation_key={key!r} is not in adata.obsm; available: {_preview(list(adata.obsm))}.")
        if "PCs" not in adata.varm:
            raise KeyError(
                f"representation_key={key!r} needs its loadings in adata.varm['PCs'] (as written by sc.pp.pca) "
                "to map generated cells back to genes."
            )
        loadings = adata.varm["PCs"]
        if loadings.shape[1] != adata.obsm[key].shape[1]:
            raise ValueError(
                f"adata.varm['PCs'] has {loadings.shape[1]} components but adata.obsm[{key!r}] has "
                f"{adata.obsm[key].shape[1]}."
            )
        return int(loadings.shape[1])

    def _representation_from_loadings(self, adata: AnnData, rows: np.ndarray) -> PCARepresentation:
        components = np.asarray(adata.varm["PCs"], dtype=np.float32).T
        total, n = np.zeros(adata.n_vars, dtype=np.float64), 0
        for chunk in self._log_normalized_rows(adata, rows):
            total += np.asarray(chunk.sum(axis=0)).ravel()
            n += chunk.shape[0]
        unscaled = PCARepresentation(total / max(n, 1), components, 1.0)
        coords = np.concatenate([unscaled.transform(c) for c in self._log_normalized_rows(adata, rows)])
        return PCARepresentation(unscaled.mean, components, float(np.sqrt(coords.var(axis=0).mean())))

    def _make_tokenizer(self, backbone, from_pretrained_kwargs):
        if not self.pretrained_backbone_:
            words = self.prompts.words(self.perturbation_categories_, self.context_categories_)
            return train_condition_tokenizer(words)
        from transformers import AutoTokenizer

        return prepare_pretrained_tokenizer(AutoTokenizer.from_pretrained(backbone, **(from_pretrained_kwargs or {})))

    @property
    def _context_combinations(self) -> list[dict[str, str]]:
        """Every combination of context values, in the index order of the training plan."""
        values = [self.context_categories_[k] for k in self.context_keys_]
        return [dict(zip(self.context_keys_, combo, strict=True)) for combo in itertools.product(*values)]

    def _context_index(self, context: Mapping[str, str]) -> int:
        index = 0
        for key in self.context_keys_:
            categories = self.context_categories_[key]
            index = index * len(categories) + categories.index(str(context[key]))
        return index

    def _obs_context_index(self, obs: pd.DataFrame) -> np.ndarray:
        index = np.zeros(len(obs), dtype=np.int64)
        for key in self.context_keys_:
            categories = pd.Index(self.context_categories_[key])
            codes = categories.get_indexer(obs[key].astype(str))
            if (codes < 0).any():
                unknown = sorted(set(obs[key].astype(str)[codes < 0]))
                raise ValueError(f"context {key!r} values {unknown} are unknown; known: {_preview(categories)}.")
            index = index * len(categories) + codes
        return index

    def _check_controls_per_context(self, adata: AnnData, mask: np.ndarray | None = None) -> None:
        obs = adata.obs if mask is None else adata.obs[mask]
        is_control = obs[self.perturbation_key_].astype(str) == self.control_value_
        if not self.context_keys_:
            return
        contexts = obs[self.context_keys_].astype(str).drop_duplicates()
        with_controls = obs.loc[is_control, self.context_keys_].astype(str).drop_duplicates()
        merged = contexts.merge(with_controls, how="left", indicator=True)
        missing = merged[merged["_merge"] == "left_only"][self.context_keys_]
        if len(missing):
            raise ValueError(
                f"source='control' needs control cells ({self.control_value_!r}) in every context; none in "
                f"{missing.to_dict('records')}. Use source='noise' or add controls."
            )

    def _log_normalized_rows(self, adata: AnnData, rows: np.ndarray):
        matrix = self._expression_matrix(adata)
        for chunk in iter_row_chunks(matrix, rows):
            yield log_normalize(chunk) if self.normalize_counts_ else chunk

    @property
    def _representation(self) -> PCARepresentation:
        if self.representation_ is None:
            raise RuntimeError("the model is not trained yet: call model.train() first.")
        return PCARepresentation.from_state_dict(self.representation_)

    def _prompt_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and masks of every (perturbation category, context combination)."""
        combos = self._context_combinations or [{}]
        texts = [self.prompts.build(p, c) for p in self.perturbation_categories_ for c in combos]
        ids, mask = self._tokenize(texts)
        shape = (len(self.perturbation_categories_), len(combos), ids.shape[1])
        return ids.view(shape), mask.view(shape)

    def _tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = self.tokenizer(list(texts), padding=True, return_tensors="pt")
        return encoded["input_ids"], encoded["attention_mask"]

    # ================================================================ training
    def train(
        self,
        max_epochs: int | None = None,
        max_steps: int | None = None,
        batch_size: int = 128,
        lr: float = 1e-3,
        held_out: Mapping[str, Sequence[str] | str] | np.ndarray | None = None,
        seed: int | None = None,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        train_size: float = 0.9,
        early_stopping: bool = False,
        early_stopping_patience: int = 10,
        weight_decay: float = 0.01,
        continue_training: bool = True,
        plan_kwargs: dict[str, Any] | None = None,
        **trainer_kwargs: Any,
    ) -> None:
        """Train with Lightning (through scvi-tools' ``TrainRunner``).

        Parameters
        ----------
        max_epochs
            Passes over the training cells; by default enough for about 4,000 steps (at most 500).
        max_steps
            Stop after this many optimisation steps (whichever of the two comes first).
        batch_size
            Cells per minibatch (grouped by condition into sequences of ``n_trajectories``).
        lr
            AdamW learning rate.
        held_out
            Cells kept out of training entirely: a mapping from obs column to value(s) (a cell is
            held out when it matches every column) or a boolean mask. Recorded in the model.
        seed
            Seed of every random number generator used in training.
        accelerator, devices
            Lightning accelerator and devices (``strategy=`` and other Trainer options go in
            ``trainer_kwargs``).
        train_size
            Fraction of the non-held-out cells used for training; the rest is validation.
        early_stopping
            Stop when ``validation_loss`` stops improving.
        early_stopping_patience
            Epochs without improvement before stopping.
        weight_decay
            AdamW weight decay.
        continue_training
            Continue from the state of an earlier ``train`` call (also across ``save``/``load``): the
            optimizer state and the epoch count carry over, and with the same ``seed`` the epochs
            draw what one uninterrupted run would have. ``False`` starts a fresh optimizer.
        plan_kwargs
            Extra :class:`~calmflow_sc.model.CaLMFlowTrainingPlan` / scvi ``TrainingPlan`` options.
        **trainer_kwargs
            Passed to the Lightning ``Trainer`` (e.g. ``strategy``, ``enable_progress_bar``).
        """
        if self.adata is None:
            raise RuntimeError("this model has no AnnData attached; load it with adata= to train.")
        if batch_size < 1 or not 0 < train_size <= 1:
            raise ValueError(f"batch_size must be >= 1 and 0 < train_size <= 1, got {batch_size}, {train_size}.")
        adata = self.adata
        mask = held_out_mask(adata, held_out)
        if seed is not None:
            import lightning

            lightning.seed_everything(seed, workers=True, verbose=False)
        rng = np.random.default_rng(seed)
        fit_rows = np.flatnonzero(~mask)
        obs = adata.obs
        perts = obs[self.perturbation_key_].astype(str).to_numpy()
        if not (perts[fit_rows] == self.control_value_).any():
            raise ValueError("held_out removes every control cell; keep controls in training.")
        if self.source == "control":
            self._check_controls_per_context(adata, ~mask)

        if self.representation_ is None and self.representation_key is not None:
            self._check_representation_key(adata, self.representation_key)
            self.representation_ = self._representation_from_loadings(adata, fit_rows).state_dict()
        if self.representation_ is None:
            logger.info("fitting the %d-component PCA on %d training cells", self.module.n_features, len(fit_rows))
            if adata.isbacked or len(fit_rows) * adata.n_vars > STREAMING_PCA_ELEMENTS:
                # read the cells in chunks (randomized subspace iteration), never the whole matrix
                self.representation_ = PCARepresentation.fit_streaming(
                    lambda: self._log_normalized_rows(adata, fit_rows),
                    self.module.n_features,
                    seed=0 if seed is None else seed,
                ).state_dict()
            else:
                matrix = (
                    sp.vstack(list(self._log_normalized_rows(adata, fit_rows)))
                    if sp.issparse(self._expression_matrix(adata))
                    else np.concatenate(list(self._log_normalized_rows(adata, fit_rows)))
                )
                self.representation_ = PCARepresentation.fit(
                    matrix, self.module.n_features, seed=0 if seed is None else seed
                ).state_dict()
        self._record_training_conditions(fit_rows, mask, held_out)

        perm = rng.permutation(fit_rows)
        n_train = max(1, round(train_size * len(perm)))
        train_idx, val_idx = np.sort(perm[:n_train]), np.sort(perm[n_train:])
        test_idx = np.flatnonzero(mask)
        if max_epochs is None:
            max_epochs = (
                10_000 if max_steps is not None else int(np.clip(np.ceil(4000 * batch_size / max(n_train, 1)), 1, 500))
            )
        if max_steps is not None:
            trainer_kwargs["max_steps"] = int(max_steps)

        rep = self._representation
        ids, prompt_mask = self._prompt_table()
        pool = self._control_pool() if self.source == "control" else None
        coupling = self._coupling(np.concatenate([train_idx, val_idx]), pool) if self.pairing == "ot" else None
        plan = self._training_plan_cls(
            self.module,
            pca_mean=torch.as_tensor(rep.mean),
            pca_components=torch.as_tensor(rep.components),
            pca_scale=rep.scale,
            normalize_counts=self.normalize_counts_,
            prompt_ids=ids,
            prompt_mask=prompt_mask,
            context_radix=[len(self.context_categories_[k]) for k in self.context_keys_],
            source=self.source,
            control_pool=pool,
            coupling=coupling,
            seed=seed,
            epoch_offset=self.epochs_trained_ if continue_training else 0,
            optimizer_state=self.optimizer_state_ if continue_training else None,
            lr=lr,
            weight_decay=weight_decay,
            **(plan_kwargs or {}),
        )
        splitter = self._data_splitter_cls(
            self.adata_manager,
            external_indexing=[train_idx, val_idx, test_idx],
            batch_size=batch_size,
            # each process of a DDP strategy reads its own share of every epoch (as scvi-tools' models do)
            distributed_sampler=use_distributed_sampler(trainer_kwargs.get("strategy")),
        )
        trainer_kwargs.setdefault("check_val_every_n_epoch", 1)
        if len(val_idx) == 0:
            trainer_kwargs["check_val_every_n_epoch"] = None
            trainer_kwargs.setdefault("limit_val_batches", 0)
        runner = self._train_runner_cls(
            self,
            training_plan=plan,
            data_splitter=splitter,
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            early_stopping=early_stopping,
            early_stopping_monitor="validation_loss",
            early_stopping_patience=early_stopping_patience,
            **trainer_kwargs,
        )
        try:
            runner()
            self._keep_training_state(runner, continue_training)
        except SystemExit:
            # Lightning turns Ctrl+C into SystemExit(1) after a graceful shutdown and ignores SIGINT
            # from then on; restore the handler and keep the model trained so far.
            if runner.trainer.state.status != TrainerStatus.INTERRUPTED:
                raise
            signal.signal(signal.SIGINT, signal.default_int_handler)
            warnings.warn(
                f"training interrupted at epoch {runner.trainer.current_epoch}, step {runner.trainer.global_step}; "
                "the model keeps the weights and history so far and can predict.",
                UserWarning,
                stacklevel=2,
            )
            self.is_trained_ = True
            self._keep_training_state(runner, continue_training)
        finally:
            self.module.eval()

    def _coupling(self, rows: np.ndarray, pool: ControlPool | None) -> ConditionCoupling:
        """OT coupling of the cells ``rows`` (training and validation) with sources, within conditions."""
        adata, rep = self.adata, self._representation
        rows = np.sort(rows)
        targets = np.empty((len(rows), rep.n_components), dtype=np.float32)
        start = 0
        for chunk in self._log_normalized_rows(adata, rows):  # a chunk at a time: works backed
            targets[start : start + chunk.shape[0]] = rep.transform(chunk)
            start += chunk.shape[0]
        obs = adata.obs.iloc[rows]
        perturbation = pd.Index(self.perturbation_categories_).get_indexer(obs[self.perturbation_key_].astype(str))
        contexts = self._obs_context_index(obs) if self.context_keys_ else np.zeros(len(rows), dtype=np.int64)
        groups = perturbation.astype(np.int64) * max(len(self._context_combinations), 1) + contexts
        return ConditionCoupling(rows, targets, groups, source=self.source, contexts=contexts, control_pool=pool)

    def _keep_training_state(self, runner: TrainRunner, continued: bool) -> None:
        """Remember the optimizer state and epoch count, so a later ``train`` call continues."""
        if runner.training_plan._trainer is None:
            # ddp_spawn: the optimizer lived in the worker processes; only the weights come back
            logger.info("the optimizer state stays in the spawned workers; a later train() starts a fresh optimizer.")
            self.optimizer_state_ = None
            epochs = max((len(v) for k, v in (self.history_ or {}).items() if k.startswith("train_loss")), default=0)
            self.epochs_trained_ = (self.epochs_trained_ if continued else 0) + epochs
            return
        optimizer = runner.training_plan.optimizers().optimizer
        self.optimizer_state_ = {
            "state": {
                k: {n: v.detach().cpu().clone() if torch.is_tensor(v) else v for n, v in st.items()}
                for k, st in optimizer.state_dict()["state"].items()
            },
            "param_groups": optimizer.state_dict()["param_groups"],
        }
        self.epochs_trained_ = (self.epochs_trained_ if continued else 0) + runner.trainer.current_epoch

    def _record_training_conditions(self, fit_rows: np.ndarray, mask: np.ndarray, held_out) -> None:
        adata, obs = self.adata, self.adata.obs
        perts = obs[self.perturbation_key_].astype(str).to_numpy()
        parts: set[str] = set()
        for value in pd.unique(perts[fit_rows]):
            parts.update(self.prompts.parts(value))
        self.known_parts_ = sorted(parts)
        self.known_context_ = {
            k: sorted(pd.unique(obs[k].astype(str).to_numpy()[fit_rows])) for k in self.context_keys_
        }
        held_obs = obs.loc[mask, [self.perturbation_key_, *self.context_keys_]].astype(str).drop_duplicates()
        self.held_out_ = {
            "spec": held_out if isinstance(held_out, dict | type(None)) else "boolean mask",
            "n_cells": int(mask.sum()),
            "obs_names": np.asarray(adata.obs_names[mask]).astype(str).tolist(),
            "conditions": held_obs.to_dict("records"),
        }
        ctrl_rows = fit_rows[perts[fit_rows] == self.control_value_]
        rep = self._representation
        coordinates = np.empty((len(ctrl_rows), rep.n_components), dtype=np.float32)
        residuals = np.empty((len(ctrl_rows), adata.n_vars), dtype=np.float32)
        start = 0
        for chunk in self._log_normalized_rows(adata, ctrl_rows):  # a chunk at a time, outputs filled in place
            stop = start + chunk.shape[0]
            coordinates[start:stop], residuals[start:stop] = rep.transform(chunk), rep.residual(chunk)
            start = stop
        self.control_pool_ = {
            "coordinates": coordinates,
            "residuals": residuals,
            "contexts": self._obs_context_index(obs.iloc[ctrl_rows]),
            "obs_names": np.asarray(adata.obs_names[ctrl_rows]).astype(str),
        }

    # ============================================================== prediction
    def _check_trained(self) -> None:
        if self.representation_ is None or self.known_parts_ is None:
            raise RuntimeError("the model is not trained yet: call model.train() first.")

    def _normalise_requests(
        self, perturbations: str | Sequence[str], context: Mapping[str, str] | Sequence[Mapping[str, str]] | None
    ) -> list[tuple[str, dict[str, str]]]:
        perts = [perturbations] if isinstance(perturbations, str) else list(perturbations)
        if not perts:
            raise ValueError("perturbations is empty.")
        if context is None or isinstance(context, Mapping):
            contexts = [dict(context or {})] * len(perts)
        else:
            contexts = [dict(c) for c in context]
            if len(contexts) != len(perts):
                raise ValueError(
                    f"context has {len(contexts)} entries but perturbations has {len(perts)}; pass one "
                    "mapping for all, or one per perturbation."
                )
        requests = []
        for pert, ctx in zip(perts, contexts, strict=True):
            ctx = {k: str(v) for k, v in ctx.items()}
            extra = sorted(set(ctx) - set(self.context_keys_))
            if extra:
                raise KeyError(f"context keys {extra} were not registered; context keys are {self.context_keys_}.")
            for key in self.context_keys_:
                if key not in ctx:
                    known = self.known_context_[key]
                    if len(known) != 1:
                        raise KeyError(f"context needs a value for {key!r}; known values: {_preview(known)}.")
                    ctx[key] = known[0]
                elif ctx[key] not in self.known_context_[key]:
                    raise ValueError(
                        f"context {key}={ctx[key]!r} was never seen in training; known: "
                        f"{_preview(self.known_context_[key])}."
                    )
            for part in self.prompts.parts(pert):
                if part not in self.known_parts_:
                    raise ValueError(
                        f"perturbation part {part!r} (in {pert!r}) was never seen in training; known parts: "
                        f"{_preview(self.known_parts_)}."
                    )
            requests.append((pert.strip(), ctx))
        return requests

    def _generator(self, seed: int | None) -> tuple[torch.Generator, int]:
        if seed is None:
            seed = int(np.random.default_rng().integers(0, 2**31 - 1))
        return torch.Generator(device=self.device).manual_seed(int(seed)), int(seed)

    def _rollout(
        self,
        prompts: Sequence[str],
        x0: torch.Tensor,
        *,
        temperature: float,
        generator: torch.Generator,
        batch_size: int,
        return_trajectory: bool = False,
        description: str = "sampling",
    ) -> torch.Tensor:
        """Roll out sequences ``x0`` ``(S, P, D)`` with one prompt per sequence, in batches."""
        unique = sorted(set(prompts))
        ids_u, mask_u = self._tokenize(unique)
        position = {p: i for i, p in enumerate(unique)}  # each distinct prompt is tokenised once
        lookup = torch.as_tensor([position[p] for p in prompts])
        outputs = []
        n_seq = x0.shape[0]
        step = max(1, batch_size // x0.shape[1])
        for start in tqdm(range(0, n_seq, step), desc=description, disable=n_seq <= step, leave=False):
            rows = lookup[start : start + step]
            out = self.module.sample(
                x0[start : start + step].to(self.device),
                ids_u[rows].to(self.device),
                mask_u[rows].to(self.device),
                temperature=temperature,
                generator=generator,
                return_trajectory=return_trajectory,
            )
            outputs.append(out.cpu())
        return torch.cat(outputs)

    def _sources(
        self,
        requests: list[tuple[str, dict[str, str]]],
        n_cells: int,
        source: str | AnnData | None,
        generator: torch.Generator,
    ) -> tuple[list[_SourceDraw], str]:
        """Source states per request: noise, sampled controls or given control cells."""
        source = self.source if source is None else source
        d = self.module.n_features
        cpu_gen = torch.Generator().manual_seed(
            int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device))
        )
        out = []
        if isinstance(source, AnnData):
            z, residuals, names = self._source_cells(source)
            return [
                _SourceDraw(pert, ctx, torch.as_tensor(z), names, residuals) for pert, ctx in requests
            ], "given cells"
        if source == "noise":
            for pert, ctx in requests:
                out.append(_SourceDraw(pert, ctx, torch.randn(n_cells, d, generator=cpu_gen), None, None))
            return out, "noise"
        if source != "control":
            raise ValueError(f"source must be 'noise', 'control' or an AnnData of control cells, got {source!r}.")
        pool = self._control_pool()
        for pert, ctx in requests:
            index = self._context_index(ctx) if self.context_keys_ else 0
            if pool.available(index) == 0:
                raise ValueError(f"no training control cells in context {ctx}; use source='noise'.")
            coords, idx = pool.sample(torch.full((n_cells,), index, dtype=torch.long), generator=cpu_gen)
            rows = idx.numpy()
            residuals = self.control_pool_["residuals"][pool.residuals[rows]]  # pool.residuals holds row numbers
            out.append(_SourceDraw(pert, ctx, coords, pool.names[rows], residuals))
        return out, "control"

    def _control_pool(self) -> ControlPool:
        state = self.control_pool_
        # the pool carries each cell's row in control_pool_ (as its per-cell payload), not the residuals
        # themselves, so the (n_controls, n_genes) array is never copied into the pool's order
        rows = np.arange(len(state["contexts"]))
        return ControlPool(state["coordinates"], state["contexts"], state["obs_names"], rows)

    def _source_cells(self, cells: AnnData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        missing = pd.Index(self.var_names_).difference(cells.var_names.astype(str))
        if len(missing):
            raise ValueError(f"source AnnData lacks {len(missing)} of the model's genes: {_preview(missing)}.")
        # rows in chunks, then the model's genes in its order: works for backed AnnData (and backed
        # views) without indexing them twice, and fills the outputs in place
        cols = pd.Index(cells.var_names.astype(str)).get_indexer(self.var_names_)
        rep = self._representation
        n = cells.n_obs
        z = np.empty((n, rep.n_components), dtype=np.float32)
        residuals = np.empty((n, len(cols)), dtype=np.float32)
        start = 0
        for chunk in iter_row_chunks(cells.X, np.arange(n), chunk_size=BACKED_CHUNK):
            chunk = chunk[:, cols]
            chunk = log_normalize(chunk) if self.normalize_counts_ else chunk
            stop = start + chunk.shape[0]
            z[start:stop], residuals[start:stop] = rep.transform(chunk), rep.residual(chunk)
            start = stop
        return z, residuals, np.asarray(cells.obs_names.astype(str))

    def predict_perturbation(
        self,
        perturbations: str | Sequence[str],
        context: Mapping[str, str] | Sequence[Mapping[str, str]] | None = None,
        n_cells: int = 500,
        source: Source | AnnData | None = None,
        temperature: float | None = None,
        n_trajectories: int | None = None,
        seed: int | None = None,
        batch_size: int = 1024,
        keep_source_residual: bool = True,
    ) -> AnnData:
        """Generate cells under perturbations, including combinations never measured.

        Parameters
        ----------
        perturbations
            One perturbation or a list (combinations as ``"A+B"``; parts must have been seen in
            training, the combination need not).
        context
            Context values (``{"cell_type": "k562"}``), one mapping for all perturbations or one
            per perturbation. Keys with a single known value may be omitted.
        n_cells
            Cells to generate per perturbation (ignored when ``source`` is an AnnData).
        source
            ``"noise"``, ``"control"`` (controls of the same context, drawn with replacement) or
            an AnnData of control cells whose counterfactual responses are returned one-to-one.
            Defaults to the model's source.
        temperature
            Sampling temperature (defaults to the model's).
        n_trajectories
            ``P`` trajectories per sequence at sampling time (defaults to the trained ``P``).
        seed
            Random seed; recorded in ``uns['calmflow']``. Same seed, same cells.
        batch_size
            Cells rolled out at once.
        keep_source_residual
            For control-cell sources, keep each source cell's expression outside the model's PCA
            subspace (``x - inverse(project(x))``) in its prediction: the model changes the PCA
            part, the rest of the real cell is carried over. Ignored for noise sources.

        Returns
        -------
        AnnData of generated cells: the model's genes (same order) in ``X`` (log-normalised,
        non-negative), ``obs`` with the perturbation column, the context columns and
        ``generated=True``, PCA coordinates in ``obsm['X_calmflow']`` and provenance in
        ``uns['calmflow']``.
        """
        self._check_trained()
        requests = self._normalise_requests(perturbations, context)
        if not isinstance(source, AnnData) and (int(n_cells) != n_cells or n_cells <= 0):
            raise ValueError(f"n_cells must be a positive integer, got {n_cells!r}.")
        temperature = self.temperature if temperature is None else float(temperature)
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}.")
        p = self.module.n_trajectories if n_trajectories is None else int(n_trajectories)
        if p < 1:
            raise ValueError(f"n_trajectories must be >= 1, got {n_trajectories}.")
        generator, seed = self._generator(seed)
        per_request, source_name = self._sources(requests, int(n_cells), source, generator)
        finals, obs_rows, source_names, residuals = [], [], [], []
        for pert, ctx, x0, names, residual in per_request:
            n = x0.shape[0]
            n_seq = -(-n // p)
            padded = torch.cat([x0, x0[: n_seq * p - n]]) if n_seq * p > n else x0
            prompt = self.prompts.build(pert, ctx)
            z = self._rollout(
                [prompt] * n_seq,
                padded.view(n_seq, p, -1),
                temperature=temperature,
                generator=generator,
                batch_size=batch_size,
                description=f"predicting {pert}",
            )
            finals.append(z.reshape(n_seq * p, -1)[:n].numpy())
            obs_rows += [{self.perturbation_key_: pert, **ctx}] * n
            source_names.append(names if names is not None else np.full(n, "", dtype=object))
            residuals.append(residual)
        z = np.concatenate(finals)
        keep = keep_source_residual and all(r is not None for r in residuals)
        obs = pd.DataFrame(obs_rows)
        if any(len(s) for s in source_names) and source_name != "noise":
            obs["source_cell"] = np.concatenate(source_names)
        return self._to_anndata(
            z,
            obs,
            {
                "temperature": temperature,
                "seed": seed,
                "source": source_name,
                "n_trajectories": p,
                "keep_source_residual": keep,
            },
            residual=residuals if keep else None,
        )

    def _to_anndata(
        self,
        z: np.ndarray,
        obs: pd.DataFrame,
        info: dict[str, Any],
        residual: np.ndarray | list[np.ndarray] | None = None,
    ) -> AnnData:
        rep = self._representation
        obs = obs.copy()
        obs["generated"] = True
        for column in [self.perturbation_key_, *self.context_keys_]:
            if column in obs:
                obs[column] = pd.Categorical(obs[column].astype(str))
        obs.index = pd.Index([f"generated-{i}" for i in range(len(obs))])
        x = rep.inverse_transform(z, clip=residual is None)
        if residual is not None:  # added block by block and clipped in place: X is held once
            start = 0
            for block in [residual] if isinstance(residual, np.ndarray) else residual:
                x[start : start + len(block)] += block
                start += len(block)
            np.clip(x, 0.0, None, out=x)
        out = AnnData(
            X=x,
            obs=obs,
            var=pd.DataFrame(index=pd.Index(self.var_names_, name=None)),
        )
        out.obsm[OBSM_KEY] = rep.to_coordinates(z)
        out.uns[UNS_KEY] = {
            "version": __version__,
            "backbone": self.backbone_name_,
            "n_time_points": self.module.n_time_points,
            "n_spatial_tokens": self.module.n_spatial_tokens,
            **info,
        }
        return out

    def generate(
        self,
        prompts: str | Sequence[str],
        n_cells: int = 500,
        *,
        temperature: float | None = None,
        seed: int | None = None,
        batch_size: int = 1024,
    ) -> AnnData:
        """Generate cells from noise for free-text prompts.

        With a randomly initialised backbone every word must be in the condition vocabulary
        (build prompts like ``model.prompts.build("KLF1+MAP2K6", {"cell_type": "k562"})``); a
        pretrained backbone's tokenizer accepts any text.

        Parameters
        ----------
        prompts
            One prompt or a list.
        n_cells
            Cells per prompt.
        temperature
            Sampling temperature (defaults to the model's).
        seed
            Random seed.
        batch_size
            Cells rolled out at once.

        Returns
        -------
        AnnData of generated cells with ``obs['prompt']`` and ``generated=True``.
        """
        self._check_trained()
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if int(n_cells) != n_cells or n_cells <= 0:
            raise ValueError(f"n_cells must be a positive integer, got {n_cells!r}.")
        if not self.pretrained_backbone_:
            unk = self.tokenizer.unk_token_id
            for text in prompts:
                ids = self.tokenizer(text)["input_ids"]
                if unk in ids:
                    raise ValueError(f"prompt {text!r} contains words outside the condition vocabulary.")
        temperature = self.temperature if temperature is None else float(temperature)
        generator, seed = self._generator(seed)
        p = self.module.n_trajectories
        n_seq = -(-n_cells // p)
        finals, obs_rows = [], []
        cpu_gen = torch.Generator().manual_seed(seed)
        for text in prompts:
            x0 = torch.randn(n_seq, p, self.module.n_features, generator=cpu_gen)
            z = self._rollout([text] * n_seq, x0, temperature=temperature, generator=generator, batch_size=batch_size)
            finals.append(z.reshape(n_seq * p, -1)[:n_cells].numpy())
            obs_rows += [{"prompt": text}] * n_cells
        return self._to_anndata(
            np.concatenate(finals),
            pd.DataFrame(obs_rows),
            {"temperature": temperature, "seed": seed, "source": "noise", "n_trajectories": p},
        )

    def get_trajectories(
        self,
        perturbation: str,
        context: Mapping[str, str] | None = None,
        n_cells: int = 100,
        source: Source | None = None,
        temperature: float | None = None,
        seed: int | None = None,
    ) -> np.ndarray:
        """States of generated cells at every time point, for plotting the flow.

        Parameters
        ----------
        perturbation
            The condition.
        context
            Its context values.
        n_cells
            Number of trajectories.
        source
            ``"noise"`` or ``"control"`` (defaults to the model's).
        temperature
            Sampling temperature.
        seed
            Random seed.

        Returns
        -------
        PCA coordinates of shape ``(n_cells, n_time_points, n_components)``; time point ``i`` is
        ``t = i / (n_time_points - 1)``.
        """
        self._check_trained()
        requests = self._normalise_requests(perturbation, context)
        if int(n_cells) != n_cells or n_cells <= 0:
            raise ValueError(f"n_cells must be a positive integer, got {n_cells!r}.")
        temperature = self.temperature if temperature is None else float(temperature)
        generator, _ = self._generator(seed)
        [(pert, ctx, x0, _, _)], _ = self._sources(requests, int(n_cells), source, generator)
        p = self.module.n_trajectories
        n_seq = -(-n_cells // p)
        padded = torch.cat([x0, x0[: n_seq * p - n_cells]]) if n_seq * p > n_cells else x0
        traj = self._rollout(
            [self.prompts.build(pert, ctx)] * n_seq,
            padded.view(n_seq, p, -1),
            temperature=temperature,
            generator=generator,
            batch_size=1024,
            return_trajectory=True,
        )
        traj = traj.reshape(n_seq * p, self.module.n_time_points, -1)[:n_cells].numpy()
        return self._representation.to_coordinates(traj)

    # ================================================================= I/O
    def save(self, dir_path: str, overwrite: bool = False, save_anndata: bool = False, **kwargs: Any) -> None:
        """Save everything needed to predict again, atomically.

        Parameters
        ----------
        dir_path
            Target folder (created; written to a temporary sibling first, then renamed).
        overwrite
            Replace an existing model folder.
        save_anndata
            Also write the AnnData (``adata.h5ad``).
        **kwargs
            Passed to ``AnnData.write_h5ad``.
        """
        from calmflow_sc.model._io import save_model

        save_model(self, dir_path, overwrite=overwrite, save_anndata=save_anndata, **kwargs)

    @classmethod
    def load(
        cls,
        dir_path: str,
        adata: AnnData | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
        **kwargs: Any,
    ) -> CaLMFlowModel:
        """Load a saved model, optionally attached to an AnnData with the same genes.

        Parameters
        ----------
        dir_path
            Folder written by :meth:`save`.
        adata
            AnnData to attach (for further training); it is set up with the saved arguments and
            must have the same genes. Without it the model can still predict.
        accelerator, device
            Where to put the module (Lightning-style).
        **kwargs
            Unused; for scvi-tools compatibility.

        Returns
        -------
        The model.
        """
        from calmflow_sc.model._io import load_model

        return load_model(cls, dir_path, adata=adata, accelerator=accelerator, device=device)
