"""Atomic save and load of ``CaLMFlowModel`` folders."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from anndata import AnnData
from transformers import AutoConfig, PreTrainedTokenizerFast

from calmflow_sc import __version__

if TYPE_CHECKING:
    from calmflow_sc.model._model import CaLMFlowModel

MODEL_FILE = "model.pt"
CONFIG_FILE = "backbone_config.json"
TOKENIZER_DIR = "tokenizer"
MANIFEST_FILE = "calmflow.json"
REQUIRED = (MODEL_FILE, CONFIG_FILE, TOKENIZER_DIR, MANIFEST_FILE)
# attributes that are derived from the registry or the module, not saved
_NOT_SAVED = {"init_params_", "registry_", "summary_stats"}


def _model_attributes(model: CaLMFlowModel) -> dict[str, Any]:
    return {k: v for k, v in vars(model).items() if k.endswith("_") and not k.startswith("_") and k not in _NOT_SAVED}


def save_model(
    model: CaLMFlowModel,
    dir_path: str | os.PathLike,
    *,
    overwrite: bool = False,
    save_anndata: bool = False,
    **anndata_write_kwargs: Any,
) -> None:
    """Write a model folder atomically (temporary sibling folder, then rename).

    Parameters
    ----------
    model
        The model.
    dir_path
        Destination folder.
    overwrite
        Replace an existing folder; the old one is removed only after the new one is in place.
    save_anndata
        Also write the attached AnnData as ``adata.h5ad``.
    **anndata_write_kwargs
        Passed to ``AnnData.write_h5ad``.
    """
    target = Path(dir_path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; pass overwrite=True to replace it.")
    if save_anndata and model.adata is None:
        raise ValueError("save_anndata=True but the model has no AnnData attached.")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        payload = {
            "class": type(model).__name__,
            "version": __version__,
            "module_state": model.module.state_dict(),
            "init_params": model.init_params_,
            "registry": model.registry_,
            "attributes": _model_attributes(model),
        }
        torch.save(payload, tmp / MODEL_FILE)
        (tmp / CONFIG_FILE).write_text(model.module.base_model.config.to_json_string())
        model.tokenizer.save_pretrained(tmp / TOKENIZER_DIR)
        if save_anndata:
            model.adata.write_h5ad(tmp / "adata.h5ad", **anndata_write_kwargs)
        (tmp / MANIFEST_FILE).write_text(
            json.dumps(
                {
                    "class": type(model).__name__,
                    "version": __version__,
                    "files": sorted(p.name for p in tmp.iterdir()),
                },
                indent=2,
            )
        )
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_model(
    cls: type[CaLMFlowModel],
    dir_path: str | os.PathLike,
    *,
    adata: AnnData | None = None,
    accelerator: str = "auto",
    device: int | str = "auto",
) -> CaLMFlowModel:
    """Rebuild a model from a folder written by :func:`save_model`.

    Parameters
    ----------
    cls
        The model class.
    dir_path
        The folder.
    adata
        Optional AnnData to attach; it must have the saved genes in the same order.
    accelerator, device
        Where to put the module.

    Returns
    -------
    The model, in evaluation mode.
    """
    from scvi.model._utils import parse_device_args

    folder = Path(dir_path)
    if not folder.is_dir():
        raise FileNotFoundError(f"no model folder at {folder}.")
    missing = [name for name in REQUIRED if not (folder / name).exists()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a complete calmflow-sc model folder: missing {missing}.")
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    if manifest.get("class") != cls.__name__:
        raise TypeError(f"{folder} holds a {manifest.get('class')!r} model, not {cls.__name__!r}.")
    try:
        payload = torch.load(folder / MODEL_FILE, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated or corrupted file
        raise OSError(f"could not read {folder / MODEL_FILE} (truncated or corrupted?): {err}") from err
    attributes = payload["attributes"]
    registry = payload["registry"]
    var_names = np.asarray(attributes["var_names_"]).astype(str)
    if adata is not None:
        given = np.asarray(adata.var_names.astype(str))
        if given.shape != var_names.shape or not np.array_equal(given, var_names):
            extra = sorted(set(given) - set(var_names))[:10]
            absent = sorted(set(var_names) - set(given))[:10]
            raise ValueError(
                f"adata genes differ from the model's ({adata.n_vars} vs {len(var_names)} genes; "
                f"missing e.g. {absent}, unexpected e.g. {extra}; same genes in the same order are required)."
            )
        cls.setup_anndata(adata, **registry["setup_args"])

    config = AutoConfig.for_model(**json.loads((folder / CONFIG_FILE).read_text()))
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder / TOKENIZER_DIR)
    init = payload["init_params"]
    params = {**init["non_kwargs"], **init["kwargs"].get("module_kwargs", {})}
    params["backbone"] = config
    params.pop("from_pretrained_kwargs", None)
    representation_key = params.pop("representation_key", None)  # the representation itself is saved
    model = cls(adata, registry=None if adata is not None else registry, tokenizer=tokenizer, **params)
    model.representation_key = representation_key
    model.module.load_state_dict(payload["module_state"])
    for key, value in attributes.items():
        setattr(model, key, value)
    model.init_params_ = init
    _, _, torch_device = parse_device_args(accelerator=accelerator, devices=device, return_device="torch")
    model.module.to(torch_device)
    model.module.eval()
    return model
