"""LatentDiffusionPipeline: the one way this package turns a trained model into images.

    from latent_diffusion.pipeline import LatentDiffusionPipeline

    pipe = LatentDiffusionPipeline.from_pretrained("outputs/train/<run>/export")
    out = pipe(["walk", "fall"] * 4, guidance_scale=3.0, seed=0, output_type="pil")
    out.images[0].save("walk.png")

It holds the EMA denoiser, the Gaussian diffusion (schedule, prediction, learned
variance), the frozen VAE with its measured latent statistics and the class
names, and runs: per-image noise -> sampler with classifier-free guidance in
latent space -> VAE decode. `python -m latent_diffusion.sample`, the training
grid (lit/callbacks.py), the quality callback (metrics/callback.py) and the
sampling benchmarks all call it, so the rules below hold for each of them.

One seed rule: image (class c, index k) of seed s starts from its own CPU
generator seeded with `image_seed(s, c, k)`, and every draw of that image (start
noise, each ancestral step's noise) comes from it alone. The same (s, c, k) is
the same image whatever the batch, the other classes asked for, the number of
processes, or which of the four callers asked. Index k is the image's position
among the images of class c in the call (`indices=` names it explicitly).

One sampler table: `diffusion.samplers.DEFAULT_STEPS` (ddpm: all T, ddim: 50,
dpmpp: 20); `num_inference_steps=None` takes it. A distilled consistency student
(`python -m latent_diffusion.distill`) is an export with a `distilled` record: it samples
with `lcm` only, in its own default K, and takes the guidance w as an input (one forward
per step); `sampler_for` keeps teacher samplers and the student apart.

Why a plain class with diffusers' `from_pretrained` / `save_pretrained` / `__call__`
contract and not a `diffusers.DiffusionPipeline` subclass: DiffusionPipeline
loads every component from a subfolder through diffusers' own loader, so (1) the
VAE would have to be copied into every export, where an export *refers* to the
VAE folder by path and weights hash (one VAE serves many runs; a replaced VAE is
refused, not silently used), and (2) our diffusion (learned-range variance,
respacing per call, per-image generators) would have to pose as a diffusers
scheduler it is not. The denoiser inside is still a diffusers model
(`denoiser/` is its `save_pretrained` folder) and the output is a diffusers
`BaseOutput`, so code written against diffusers pipelines reads the same.

Export folder (= pipeline folder), written atomically by `save_pretrained`:
  denoiser/     EMA weights of the UNet / DiT (diffusers save_pretrained, safetensors)
  export.json   class names, latent shape, model + diffusion config, VAE reference
                (path, weights hash, latent stats), training step; a student's
                `distilled` record (method, grid, K, range of w, teacher)
  config.yaml   the run's resolved Hydra config (written by the training run)
Loading needs neither Lightning nor Hydra, and runs no pickled code.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers.utils import BaseOutput
from PIL import Image

from latent_diffusion.diffusion import (
    DEFAULT_STEPS,
    cfg_model_fn,
    check_scale,
    classifier_cond_fn,
    create_diffusion,
    sample,
)
from latent_diffusion.diffusion.samplers import generators_from_seeds
from latent_diffusion.utils.errors import UserError
from latent_diffusion.utils.io import atomic_dir, atomic_write_json, stable_hash
from latent_diffusion.utils.pixels import to_uint8, to_unit

EXPORT_VERSION = 1
EXPORT_FILE = "export.json"
DEFAULT_SAMPLER = "dpmpp"
# w = 3: the best CAS and domain FID measured on the small model (docs/evaluation.md)
DEFAULT_GUIDANCE = 3.0
OUTPUT_TYPES = ("pil", "np", "pt", "uint8", "latent")
IMAGE_SEED_RULE = "int(sha256(json ['sample', seed, class_index, index])[:16], 16) & (2**63-1)"


# ------------------------------------------------------------------ the seed rule
def image_seed(seed: int, class_index: int, index: int) -> int:
    """Image (class_index, index)'s own seed: 63 bits of sha256 over the triple, so
    nearby seeds give unrelated noise and no two images share a stream by accident."""
    return int(stable_hash(["sample", int(seed), int(class_index), int(index)], n=16), 16) & (
        2**63 - 1
    )


def indices_within_class(labels: Sequence[int]) -> list[int]:
    """The default index of each image: its position among the earlier images of its class."""
    seen: dict[int, int] = {}
    out = []
    for c in labels:
        out.append(seen.get(int(c), 0))
        seen[int(c)] = out[-1] + 1
    return out


# ------------------------------------------------------------------ argument checks
def sampler_for(sampler: str | None, distilled: dict | None = None) -> str:
    """The sampler to use: None -> the export's own (lcm for a distilled student, else
    DEFAULT_SAMPLER). A teacher sampler on a student, or lcm on a teacher, is refused: the
    student's weights are a consistency function, not a noise predictor, and vice versa."""
    if sampler in (None, ""):
        return "lcm" if distilled else DEFAULT_SAMPLER
    sampler = str(sampler)
    if distilled and sampler != "lcm":
        raise UserError(
            f"sampler={sampler}: this export is a distilled consistency student; it samples only "
            f"with sampler=lcm (its default, in {distilled.get('default_steps')} steps). For "
            f"{sampler}, sample its teacher: run={distilled.get('teacher', {}).get('export')}"
        )
    if sampler == "lcm" and not distilled:
        raise UserError(
            "sampler=lcm samples a distilled consistency student, and this export is a trained "
            "run (a teacher); distil it first (python -m latent_diffusion.distill run=<this run>) "
            f"or use one of {', '.join(k for k in DEFAULT_STEPS if k != 'lcm')}"
        )
    return sampler


def check_sampling_args(
    sampler: str, steps, guidance, eta, num_timesteps: int, distilled: dict | None = None
) -> int | None:
    """UserErrors for a sampler setting out of range; returns the step count (None = all T).
    distilled: the export's `distilled` record, for a student (its K and its range of w)."""
    if sampler not in DEFAULT_STEPS:
        raise UserError(f"sampler={sampler!r} is not known; use one of {', '.join(DEFAULT_STEPS)}")
    sampler_for(sampler, distilled)
    if distilled:
        from latent_diffusion.diffusion.consistency import (
            check_guidance_range,
            inference_timesteps,
            skipping_grid,
        )

        steps = int(distilled["default_steps"]) if steps is None else steps
        # any K on the student's grid works; the export lists the K its run checked
        inference_timesteps(skipping_grid(num_timesteps, int(distilled["grid_points"])), steps)
        check_guidance_range(guidance, distilled["guidance_range"])
        if eta:
            raise UserError(f"eta={eta}: only sampler=ddim takes eta; drop it")
        return steps
    if steps is None:
        steps = DEFAULT_STEPS[sampler]
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= num_timesteps:
            raise UserError(
                f"steps={steps!r}: must be an integer in [1, {num_timesteps}] "
                f"(the model was trained with T={num_timesteps} steps)"
            )
    try:
        guidance, eta = float(guidance), float(eta)
    except (TypeError, ValueError):
        raise UserError(f"guidance={guidance!r}, eta={eta!r}: both must be numbers") from None
    if not guidance >= 0:  # also rejects NaN
        raise UserError(
            f"guidance={guidance}: must be >= 0 (0 = unconditional, 1 = no guidance, >1 = guided)"
        )
    if not eta >= 0:
        raise UserError(f"eta={eta}: must be >= 0 (0 = deterministic DDIM, 1 = DDPM-like noise)")
    if eta and sampler != "ddim":
        raise UserError(f"eta={eta}: only sampler=ddim takes eta; drop it or use sampler=ddim")
    return steps


def check_export_meta(meta: dict, path, vae=None) -> None:
    """An export.json whose parts disagree (latent shape vs denoiser, class list vs label
    count, VAE vs latent shape) was edited or mixed from two runs: refuse it, listing each."""
    m, shape = meta.get("model") or {}, list(meta.get("latent_shape") or [])
    names = list(meta.get("class_names") or [])
    diffs = []
    if len(shape) != 3:
        diffs.append(f"latent_shape {shape} is not [channels, height, width]")
    else:
        for key, want in (("in_channels", shape[0]), ("sample_size", shape[1])):
            if m.get(key) is not None and int(m[key]) != int(want):
                diffs.append(f"model.{key} {m[key]} vs latent_shape {shape}")
        if vae is not None and meta.get("image_size"):
            got = list(vae.latent_shape(int(meta["image_size"])))
            if got != shape:
                diffs.append(
                    f"the VAE turns image_size {meta['image_size']} into latents {got}, not {shape}"
                )
    if m.get("num_classes") is not None and int(m["num_classes"]) != len(names):
        diffs.append(f"model.num_classes {m['num_classes']} vs {len(names)} class_names {names}")
    if diffs:
        raise UserError(
            f"the export at {path} is inconsistent: {'; '.join(diffs)}. It was edited by hand or "
            "assembled from different runs; re-export the run (python -m latent_diffusion.train "
            "run_name=<run> ckpt_path=last) or use the original export folder"
        )


def find_export(run) -> Path:
    """A run directory or an export directory -> the export directory."""
    p = Path(run)
    for cand in (p, p / "export"):
        if (cand / EXPORT_FILE).is_file():
            return cand
    raise UserError(
        f"run={run}: no export found (looked for {EXPORT_FILE} in {p} and {p / 'export'}). "
        "Point run= at a training run directory whose training finished, or at its export/ folder."
    )


def read_export_meta(run) -> tuple[Path, dict]:
    """(export folder, its export.json) without loading any weights: enough to check arguments."""
    path = find_export(run)
    try:
        return path, json.loads((path / EXPORT_FILE).read_text())
    except (OSError, ValueError) as err:
        raise UserError(
            f"{path / EXPORT_FILE} cannot be read ({err}): this export is damaged; {REBUILD}"
        ) from None


# what a damaged (truncated, overwritten) export's message says to do
REBUILD = (
    "rebuild it with `python -m latent_diffusion.train run_name=<its run> ckpt_path=last` "
    "(re-exports the run's last checkpoint) or copy it again"
)


def diffusers_model(denoiser):
    """The diffusers ModelMixin inside our wrapper (UNet2DModel or DiTTransformer2DModel)."""
    for name in ("unet", "dit"):
        if hasattr(denoiser, name):
            return getattr(denoiser, name)
    raise TypeError(f"{type(denoiser).__name__} holds no diffusers model (.unet or .dit)")


def student_model_fn(student, y: torch.Tensor, w: float):
    """model_fn(x_t, t) of a guidance-distilled student at classes y and guidance w."""

    def fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return student(x_t, t, y.to(x_t.device), w=w)

    return fn


# ------------------------------------------------------------------ the pipeline
@dataclass
class LatentDiffusionPipelineOutput(BaseOutput):
    """images: list of PIL images ("pil"), (B, H, W, C) float in [0, 1] ("np"), (B, C, H, W)
    float in [0, 1] ("pt"), (B, H, W, C) uint8 ("uint8", what `sample` writes) or the latents
    ("latent"); latents: (B, c, h, w) scaled latents when return_latents=True, else None."""

    images: list | np.ndarray | torch.Tensor
    latents: torch.Tensor | None = None
    # seconds per stage of this call: "denoise" (the sampler) and "decode" (the VAE)
    timings: dict | None = None


class LatentDiffusionPipeline:
    """denoiser + diffusion + frozen VAE (or None: a pixel-space model) + class names."""

    def __init__(
        self,
        denoiser,
        diffusion,
        class_names: Sequence[str],
        latent_shape: Sequence[int],
        vae=None,
        config: dict | None = None,
        path: Path | None = None,
    ):
        self.denoiser = denoiser
        self.diffusion = diffusion
        self.vae = vae
        self.class_names = [str(c) for c in class_names]
        self.latent_shape = tuple(int(s) for s in latent_shape)
        self.config = dict(config or {})  # export.json: model / diffusion configs, provenance
        self.path = path
        self.classifier = (
            None  # a noisy latent classifier for classifier guidance (load_classifier)
        )
        self.classifier_meta: dict | None = None
        self.autocast_dtype: torch.dtype | None = None  # optimize_for_inference(precision=)

    @property
    def meta(self) -> dict:
        """export.json as read (the name the run export used before it was a pipeline)."""
        return self.config

    @property
    def distilled(self) -> dict | None:
        """The `distilled` record of a consistency student's export (distill.py), else None."""
        return self.config.get("distilled") or None

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def num_timesteps(self) -> int:
        return int(self.diffusion.num_timesteps)

    def to(self, device) -> LatentDiffusionPipeline:
        self.denoiser.to(device)
        if self.classifier is not None:
            self.classifier.to(device)
        if self.vae is not None:
            self.vae.to(device)
        return self

    def optimize_for_inference(
        self, precision: str = "auto", channels_last: bool = False, compile: bool = False
    ) -> dict:
        """Speed switches for the denoiser (latent_diffusion/inference.py): bf16 autocast where
        the device has bf16 arithmetic (auto), NHWC memory layout, torch.compile. The images
        change only by the rounding of bf16; the seeds and the batch-size independence hold.
        Returns what was applied, with the reason where a request was changed."""
        from latent_diffusion.inference import resolve_precision, set_channels_last

        chosen, note = resolve_precision(precision, self.device)
        self.autocast_dtype = torch.bfloat16 if chosen == "bf16" else None
        applied = {"precision": chosen, "precision_note": note}
        applied["channels_last"] = bool(channels_last) and set_channels_last(self.denoiser)
        if compile:
            self.denoiser = torch.compile(self.denoiser)
        applied["compile"] = bool(compile)
        return applied

    # -------------------------------------------------------------- loading / saving
    @classmethod
    def from_pretrained(
        cls, path, device="cpu", vae_path=None, load_vae: bool = True
    ) -> LatentDiffusionPipeline:
        """Rebuild an export (a run directory or its export/ folder): safetensors only.
        vae_path: where the VAE the export names lives now (its weights hash is checked);
        load_vae=False skips the VAE (the sampler's latents are then the output)."""
        from safetensors.torch import load_file

        from latent_diffusion.models import build_denoiser

        path, meta = read_export_meta(path)
        check_export_meta(meta, path)  # latent shape / classes vs the denoiser
        model_cfg = {k: v for k, v in meta["model"].items() if k != "_target_"}
        denoiser = build_denoiser(**model_cfg)
        weights = path / "denoiser" / "diffusion_pytorch_model.safetensors"
        if not weights.is_file():
            raise UserError(
                f"{weights} is missing: the export at {path} is incomplete; re-export the run"
            )
        try:
            state = load_file(weights)
        except (
            Exception
        ) as err:  # safetensors raises its own error type for a cut-off header or body
            raise UserError(
                f"{weights} cannot be read ({type(err).__name__}: {err}): this export is damaged "
                f"(truncated or overwritten); {REBUILD}"
            ) from None
        try:
            missing, unexpected = diffusers_model(denoiser).load_state_dict(state, strict=False)
        except RuntimeError as err:  # size mismatches are raised even with strict=False
            missing, unexpected = [(str(err).strip().splitlines() or [""])[-1].strip()[:200]], []
        if missing or unexpected:
            raise UserError(
                f"{weights} does not match the model config in {path / EXPORT_FILE} "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]}): the export was changed by "
                f"hand"
            )
        denoiser.eval().requires_grad_(False).to(device)
        diffusion = create_diffusion(
            **{k: v for k, v in meta["diffusion"].items() if k != "_target_"}
        )
        vae = cls.load_vae(path, device, vae_path) if load_vae else None
        if vae is not None:
            check_export_meta(meta, path, vae)  # the VAE's latents vs the export's latent shape
        return cls(denoiser, diffusion, meta["class_names"], meta["latent_shape"], vae, meta, path)

    @staticmethod
    def load_vae(path, device="cpu", vae_path=None):
        """The frozen VAE an export names (None for a pixel-space model), its weights hash
        checked; also what `evaluate` uses for the VAE-ceiling reference of a run."""
        _, meta = read_export_meta(path)
        if not meta.get("vae"):
            return None
        from latent_diffusion.vae.resolve import vae_from_reference

        return vae_from_reference(meta["vae"], device=device, path_override=vae_path)

    def load_classifier(self, path) -> LatentDiffusionPipeline:
        """Attach a noisy latent classifier (train_classifier's export) for classifier guidance.
        Refused, with every difference listed, unless it was trained on this model's classes,
        latent shape, VAE (weights and latent statistics) and noise schedule: otherwise its
        gradient would be taken on latents it has never seen."""
        from latent_diffusion.models.classifier_io import (
            check_fits,
            find_classifier,
            load_classifier,
        )

        if self.distilled:
            raise UserError(
                "classifier guidance needs the teacher: this export is a distilled consistency "
                f"student; load the classifier into {self.distilled['teacher']['export']}"
            )
        folder = find_classifier(path)
        classifier, meta = load_classifier(folder, "cpu")
        check_fits(meta, self.config, folder, self.path)
        self.classifier, self.classifier_meta = (
            classifier.to(self.device),
            {**meta, "path": str(folder)},
        )
        return self

    def save_pretrained(self, out_dir, run_config_yaml: str | None = None, **provenance) -> Path:
        """Write the export folder (see the module doc) under a temporary name and rename it
        into place, so a killed process never leaves half an export. `provenance` (global_step,
        ema_decay, ...) is recorded in export.json beside the configs."""
        from latent_diffusion.vae.resolve import vae_reference  # diffusers: imported when needed

        out_dir = Path(out_dir)
        meta = {"version": EXPORT_VERSION, **self.config, **provenance}
        meta.update(
            version=EXPORT_VERSION,
            class_names=self.class_names,
            latent_shape=list(self.latent_shape),
            vae=vae_reference(self.vae) if self.vae is not None else None,
        )
        with atomic_dir(out_dir) as tmp:
            diffusers_model(self.denoiser).save_pretrained(
                tmp / "denoiser", safe_serialization=True
            )
            atomic_write_json(tmp / EXPORT_FILE, meta)
            if run_config_yaml is not None:
                (tmp / "config.yaml").write_text(run_config_yaml)
        self.config, self.path = meta, out_dir
        return out_dir

    # -------------------------------------------------------------- generation
    def label_ids(self, class_labels) -> list[int]:
        """Class names or indices (or a mix) -> indices into class_names, each checked."""
        if isinstance(class_labels, (str, int)):
            class_labels = [class_labels]
        ids = []
        for c in class_labels:
            if isinstance(c, str):
                if c not in self.class_names:
                    raise UserError(f"class {c!r} is unknown; the model knows {self.class_names}")
                ids.append(self.class_names.index(c))
            else:
                c = int(c)
                if not 0 <= c < len(self.class_names):
                    raise UserError(
                        f"class index {c} is out of range; the model has "
                        f"{len(self.class_names)} classes {self.class_names}"
                    )
                ids.append(c)
        return ids

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, c, h, w) -> pixels (B, C, H, W) in [-1, 1]; a pixel-space
        model's sampler output is the image, clamped."""
        return self.vae.decode(z) if self.vae is not None else z.clamp(-1, 1)

    def __call__(
        self,
        class_labels,
        num_inference_steps: int | None = None,
        guidance_scale: float = DEFAULT_GUIDANCE,
        sampler: str | None = None,
        seed: int = 0,
        indices: Sequence[int] | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        eta: float = 0.0,
        batch_size: int = 64,
        output_type: str = "pil",
        return_latents: bool = False,
        on_batch: Callable[[int], None] | None = None,
        classifier_scale: float = 0.0,
    ) -> LatentDiffusionPipelineOutput:
        """Images of `class_labels` (names or indices, one per image).

        seed / indices: image i uses image_seed(seed, class_i, indices[i]); indices default to
        each image's position among the images of its class in this call. generator: diffusers'
        alternative, one generator per image (the seed rule is then not used) or one for all
        (noise then depends on the batch). guidance_scale w: 1 = the conditional model alone,
        0 = unconditional, > 1 guided (one batched forward of [x; x] per step; a distilled
        student takes w as an input, one forward). sampler None: the export's own (dpmpp, or
        lcm for a distilled student); num_inference_steps None: its default. eta: DDIM only.
        batch_size: images per forward; the images do not depend on it. on_batch(n): called
        after each batch with its image count (progress bars). classifier_scale s: classifier
        guidance with the classifier of load_classifier, s grad log p(y | x_t) added to the score
        (0 = none; 1 = p(x | y) for an exact classifier); it combines with guidance_scale.
        The output's `timings` holds the seconds spent denoising and decoding.
        """
        if output_type not in OUTPUT_TYPES:
            raise UserError(f"output_type={output_type!r}: use one of {', '.join(OUTPUT_TYPES)}")
        labels = self.label_ids(class_labels)
        sampler = sampler_for(sampler, self.distilled)
        steps = check_sampling_args(
            sampler, num_inference_steps, guidance_scale, eta, self.num_timesteps, self.distilled
        )
        classifier_scale = check_scale(classifier_scale)
        if classifier_scale > 0 and self.classifier is None:
            raise UserError(
                f"classifier_scale={classifier_scale:g} needs a classifier: "
                f"pipe.load_classifier(PATH) "
                "(sample: classifier=PATH), or classifier_scale=0"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"batch_size={batch_size!r}: must be an integer >= 1")
        if indices is None:
            indices = indices_within_class(labels)
        if len(indices) != len(labels):
            raise UserError(
                f"{len(indices)} indices for {len(labels)} class labels: give one per image"
            )
        if isinstance(generator, (list, tuple)) and len(generator) != len(labels):
            raise UserError(
                f"{len(generator)} generators for {len(labels)} images: give one per image"
            )
        # inference_mode skips autograd's version counting; classifier guidance needs a graph
        # through the classifier (the denoiser itself always runs without one)
        with torch.no_grad() if classifier_scale > 0 else torch.inference_mode():
            out = self._generate(
                labels, steps, guidance_scale, sampler, seed, indices, generator, eta,
                batch_size, output_type, return_latents, on_batch, classifier_scale,
            )  # fmt: skip
        # tensors made in inference mode refuse in-place updates and autograd afterwards;
        # a copy made outside it is an ordinary tensor for the caller
        same = out.latents is out.images  # output_type="latent" with return_latents
        if isinstance(out.images, torch.Tensor) and out.images.is_inference():
            out.images = out.images.clone()
        if out.latents is not None and out.latents.is_inference():
            out.latents = out.images if same else out.latents.clone()
        return out

    def _generate(
        self, labels, steps, guidance_scale, sampler, seed, indices, generator, eta,
        batch_size, output_type, return_latents, on_batch, classifier_scale,
    ) -> LatentDiffusionPipelineOutput:  # fmt: skip
        from latent_diffusion.inference import autocast_model_fn

        device = self.device
        kw = {"eta": float(eta)} if sampler == "ddim" else {}
        if self.distilled:
            kw = {"grid_points": int(self.distilled["grid_points"])}
        xs, zs = [], []
        timings = {"denoise": 0.0, "decode": 0.0}
        for start in range(0, len(labels), batch_size):
            chunk = labels[start : start + batch_size]
            if generator is None:
                # CPU generators: the same numbers on every device and rank
                gens = generators_from_seeds(
                    [
                        image_seed(seed, c, k)
                        for c, k in zip(chunk, indices[start : start + batch_size], strict=True)
                    ],
                    "cpu",
                )
            elif isinstance(generator, torch.Generator):
                gens = generator
            else:
                gens = list(generator[start : start + batch_size])
            y = torch.tensor(chunk, dtype=torch.long, device=device)  # (B,)
            if self.distilled:  # w is the student's input: one forward per step, no [x; x]
                fn = student_model_fn(self.denoiser, y, float(guidance_scale))
            else:
                fn = cfg_model_fn(self.denoiser, y, self.denoiser.null_class, float(guidance_scale))
            fn = autocast_model_fn(fn, device, self.autocast_dtype)
            # scale 0 passes no hook: the unguided sampler, without the classifier's cost
            cond = (
                classifier_cond_fn(self.classifier, y, classifier_scale)
                if classifier_scale > 0
                else None
            )
            t0 = time.perf_counter()
            z = sample(
                sampler,
                self.diffusion,
                fn,
                (len(chunk), *self.latent_shape),
                steps=steps,
                generators=gens,
                device=device,
                cond_fn=cond,
                **kw,
            )  # (B, c, h, w) float32
            zs.append(z.cpu())  # .cpu() waits for a GPU's kernels: the clock is honest
            t1 = time.perf_counter()
            timings["denoise"] += t1 - t0
            if output_type != "latent":
                xs.append(self.decode(z).float().cpu())  # (B, C, H, W) in [-1, 1]
                timings["decode"] += time.perf_counter() - t1
            if on_batch is not None:
                on_batch(len(chunk))
        z = torch.cat(zs) if zs else torch.zeros((0, *self.latent_shape))
        timings = {k: round(v, 4) for k, v in timings.items()}
        if output_type == "latent":
            return LatentDiffusionPipelineOutput(
                images=z, latents=z if return_latents else None, timings=timings
            )
        x = torch.cat(xs) if xs else torch.zeros((0, 1, 1, 1))
        return LatentDiffusionPipelineOutput(
            images=self.postprocess(x, output_type),
            latents=z if return_latents else None,
            timings=timings,
        )

    @staticmethod
    def postprocess(x: torch.Tensor, output_type: str):
        """(B, C, H, W) in [-1, 1] -> the requested output type (diffusers' conventions for
        "pil" / "np" / "pt"; "uint8" is the 8-bit array `sample` writes)."""
        if output_type == "pt":
            return to_unit(x)
        if output_type == "np":
            return to_unit(x).permute(0, 2, 3, 1).numpy()
        u8 = to_uint8(x)  # (B, H, W, C)
        if output_type == "uint8":
            return u8
        return [Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im) for im in u8]


__all__ = [
    "DEFAULT_GUIDANCE",
    "DEFAULT_SAMPLER",
    "LatentDiffusionPipeline",
    "LatentDiffusionPipelineOutput",
    "check_export_meta",
    "check_sampling_args",
    "diffusers_model",
    "find_export",
    "image_seed",
    "indices_within_class",
    "read_export_meta",
    "sampler_for",
]
