"""The classifier export: what `sample classifier=PATH` loads, and what it must agree with.

<classifier run dir>/classifier/
  classifier.safetensors   EMA weights of the noisy latent classifier
  classifier.json          class names, latent shape, image size, classifier config, the
                           diffusion schedule it was trained on, the VAE reference (weights
                           hash, latent stats), training step, validation accuracy per t bucket

A classifier guides a denoiser only if both see the same x_t: the same classes in the
same order, the same latent shape, the same VAE and latent statistics (the same z0), and
the same noise schedule (the same x_t for a given t). `differences` lists every mismatch.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from latent_diffusion.models.classifier import build_classifier
from latent_diffusion.utils.errors import UserError
from latent_diffusion.utils.io import atomic_dir, atomic_write_json

CLASSIFIER_VERSION = 1
# the diffusion keys that change x_t for a given (z0, t, noise) or the t the classifier sees
SCHEDULE_KEYS = ("schedule", "timesteps", "rescale_timesteps")


def save_classifier(classifier, meta: dict, export_dir) -> Path:
    """Write weights (the caller swaps the EMA in) and classifier.json atomically to export_dir;
    meta gets the version and the classifier's own config added."""
    meta = {"version": CLASSIFIER_VERSION, **meta, "classifier": dict(classifier.classifier_config)}
    export_dir = Path(export_dir)
    with atomic_dir(export_dir, overwrite=True) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in classifier.state_dict().items()}
        save_file(state, str(tmp / "classifier.safetensors"))
        atomic_write_json(tmp / "classifier.json", meta)
    return export_dir


def find_classifier(path) -> Path:
    """A classifier run dir or its classifier/ folder -> the folder holding classifier.json."""
    p = Path(path)
    for cand in (p, p / "classifier"):
        if (cand / "classifier.json").is_file():
            return cand
    raise UserError(
        f"classifier={path}: no classifier.json there or in {p / 'classifier'}; point it at a "
        "`python -m latent_diffusion.train_classifier` run folder or its classifier/ folder"
    )


def load_classifier(path, device="cpu"):
    """-> (classifier in eval mode without parameter grads, its metadata)."""
    folder = find_classifier(path)
    meta = json.loads((folder / "classifier.json").read_text())
    model = build_classifier(**meta["classifier"])
    weights = folder / "classifier.safetensors"
    if not weights.is_file():
        raise UserError(
            f"{weights} is missing: the classifier export is incomplete; rerun train_classifier"
        )
    try:
        model.load_state_dict(load_file(str(weights)))
    except RuntimeError as err:
        raise UserError(
            f"{weights} does not match {folder / 'classifier.json'} "
            f"({str(err).splitlines()[0][:160]}): "
            "the export was changed by hand; rerun train_classifier"
        ) from None
    return model.eval().requires_grad_(False).to(device), meta


def classifier_meta(
    class_names,
    latent_shape,
    image_size: int,
    diffusion_cfg: dict,
    vae_ref: dict | None,
    **provenance,
) -> dict:
    """What classifier.json records beside the weights (see the module doc)."""
    return {
        "class_names": list(class_names),
        "latent_shape": list(latent_shape),
        "image_size": int(image_size),
        "diffusion": {k: diffusion_cfg.get(k) for k in SCHEDULE_KEYS},
        "vae": vae_ref,
        **provenance,
    }


def differences(classifier_meta: dict, export_meta: dict) -> list[str]:
    """Every way a classifier does not fit a denoiser export (empty: it fits)."""
    c, e = classifier_meta, export_meta
    diffs = []
    if list(c["class_names"]) != list(e["class_names"]):
        diffs.append(f"classes {c['class_names']} vs the denoiser's {e['class_names']}")
    if list(c["latent_shape"]) != list(e["latent_shape"]):
        diffs.append(f"latent shape {c['latent_shape']} vs the denoiser's {e['latent_shape']}")
    cv, ev = c.get("vae") or {}, e.get("vae") or {}
    if cv.get("weights_hash") != ev.get("weights_hash"):
        diffs.append(
            f"VAE weights {cv.get('weights_hash')} vs the denoiser's {ev.get('weights_hash')}"
        )
    elif cv.get("latent_stats") != ev.get("latent_stats"):
        diffs.append("latent statistics (shift/scale) differ from the denoiser's")
    ed = e.get("diffusion") or {}
    for k in SCHEDULE_KEYS:
        if (c.get("diffusion") or {}).get(k) != ed.get(k):
            diffs.append(f"diffusion.{k} {c['diffusion'].get(k)!r} vs the denoiser's {ed.get(k)!r}")
    return diffs


def check_fits(classifier_meta: dict, export_meta: dict, classifier_path, export_path) -> None:
    diffs = differences(classifier_meta, export_meta)
    if diffs:
        raise UserError(
            f"classifier={classifier_path} was not trained for the denoiser at {export_path}: "
            + "; ".join(diffs)
            + ". Train one on the same data, VAE and schedule: "
            f"python -m latent_diffusion.train_classifier denoiser_run={export_path}"
        )
