"""The run export: everything `sample` and `evaluate` need, nothing that runs code.

<run_dir>/export/
  denoiser/          EMA weights of the UNet (diffusers save_pretrained: config.json + safetensors)
  export.json        class names, latent shape, model + diffusion config, VAE reference
                     (path, weights hash, latent stats), training step
  config.yaml        the resolved Hydra config of the run

Written to a temporary folder and renamed, so a killed run never leaves half an export.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file

from latent_diffusion.utils.errors import UserError
from latent_diffusion.utils.io import atomic_dir, atomic_write_json

EXPORT_VERSION = 1


def diffusers_model(denoiser):
    """The diffusers ModelMixin inside our wrapper (UNet2DModel or DiTTransformer2DModel)."""
    for name in ("unet", "dit"):
        if hasattr(denoiser, name):
            return getattr(denoiser, name)
    raise TypeError(f"{type(denoiser).__name__} holds no diffusers model (.unet or .dit)")


def _derived(denoiser) -> dict:
    """The constructor arguments the training code filled in from VAE, data and diffusion."""
    sample_size = diffusers_model(denoiser).config.sample_size
    return {"in_channels": denoiser.in_channels, "sample_size": sample_size,
            "num_classes": denoiser.num_classes, "learn_sigma": denoiser.learn_sigma}


def export_run(module, cfg: DictConfig, export_dir) -> Path:
    export_dir = Path(export_dir)
    from latent_diffusion.vae.resolve import vae_reference  # diffusers: imported when needed

    denoiser = module.plain_denoiser
    meta = {
        "version": EXPORT_VERSION,
        "class_names": module.class_names,
        "latent_shape": list(module.latent_shape),
        "image_size": int(cfg.data.image_size),
        "model": {**OmegaConf.to_container(cfg.model, resolve=True), **_derived(denoiser)},
        "diffusion": OmegaConf.to_container(cfg.diffusion, resolve=True),
        "vae": vae_reference(module.vae) if module.vae is not None else None,
        "global_step": int(module.global_step),
        "ema_decay": float(module.ema.decay),
    }
    with atomic_dir(export_dir) as tmp:
        with module.ema.swap_into(denoiser):
            diffusers_model(denoiser).save_pretrained(tmp / "denoiser", safe_serialization=True)
        atomic_write_json(tmp / "export.json", meta)
        (tmp / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return export_dir


@dataclass
class Export:
    path: Path
    meta: dict
    denoiser: object
    diffusion: object
    vae: object | None

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(self.meta["latent_shape"])


def find_export(run) -> Path:
    """A run directory or an export directory -> the export directory."""
    p = Path(run)
    for cand in (p, p / "export"):
        if (cand / "export.json").is_file():
            return cand
    raise UserError(
        f"run={run}: no export found (looked for export.json in {p} and {p / 'export'}). "
        "Point run= at a training run directory whose training finished, or at its export/ folder."
    )


def load_export(run, device="cpu", load_vae: bool = True) -> Export:
    """Rebuild the EMA denoiser, the diffusion and the VAE of an export (safetensors only)."""
    from hydra.utils import instantiate

    from latent_diffusion.lit.safe_load import check_export_meta
    from latent_diffusion.models import build_denoiser

    path = find_export(run)
    meta = json.loads((path / "export.json").read_text())
    check_export_meta(meta, path)  # latent shape / classes vs the denoiser (lit/safe_load.py)
    model_cfg = {k: v for k, v in meta["model"].items() if k != "_target_"}
    denoiser = build_denoiser(**model_cfg)
    weights = path / "denoiser" / "diffusion_pytorch_model.safetensors"
    if not weights.is_file():
        raise UserError(f"{weights} is missing: the export at {path} is incomplete; re-export the run")
    try:
        missing, unexpected = diffusers_model(denoiser).load_state_dict(load_file(weights), strict=False)
    except RuntimeError as err:  # size mismatches are raised even with strict=False
        missing, unexpected = [(str(err).strip().splitlines() or [''])[-1].strip()[:200]], []
    if missing or unexpected:
        raise UserError(
            f"{weights} does not match the model config in {path / 'export.json'} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}): the export was changed by hand"
        )
    denoiser.eval().requires_grad_(False).to(device)
    diffusion = instantiate({"_target_": "latent_diffusion.diffusion.create_diffusion",
                             **{k: v for k, v in meta["diffusion"].items() if k != "_target_"}})
    vae = None
    if load_vae and meta.get("vae"):
        from latent_diffusion.vae.resolve import vae_from_reference

        vae = vae_from_reference(meta["vae"], device=device)
        check_export_meta(meta, path, vae)
    return Export(path, meta, denoiser, diffusion, vae)
