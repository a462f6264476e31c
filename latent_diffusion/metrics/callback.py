"""Quality during training: every K steps, sample N images per class and log domain FID and CAS.

Loss curves of diffusion models say little about sample quality; this callback
puts the evaluation suite's two headline numbers on the dashboard (wandb,
tensorboard, csv) as `eval/fid_domain`, `eval/fid_real_vs_real` (the floor at
this sample size) and `eval/cas`. The domain classifier is the cached artifact
of `evaluate` for the same data and classifier config (trained once on rank 0
at fit start if absent). Sampling goes through the pipeline with its seed rule
(lit/callbacks.py PeriodicSampling), so successive values differ because the model
changed, not the noise, and the images are those `sample` writes for the same
seed, sampler, steps and guidance. Only rank 0 samples and logs.

    callbacks.domain_metrics:
      _target_: latent_diffusion.metrics.callback.DomainMetrics
      every_n_steps: 2000
      n_per_class: 32
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from latent_diffusion.lit.callbacks import PeriodicSampling
from latent_diffusion.metrics.classifier import (
    ClassifierConfig,
    load_or_train_domain_classifier,
    predict,
)
from latent_diffusion.metrics.distances import fid
from latent_diffusion.metrics.features import DomainFeatures
from latent_diffusion.utils.pixels import from_uint8

log = logging.getLogger(__name__)


def domain_scores(
    classifier, feats, real_ref: torch.Tensor, real_held: torch.Tensor, gen_x: torch.Tensor, gen_y
) -> dict:
    """FID of generated and of held-out real against the same reference (all the same size), and
    CAS."""
    n = min(len(real_ref), len(real_held), len(gen_x))
    return {
        "eval/fid_domain": fid(feats, real_ref[:n], gen_x[:n]),
        "eval/fid_real_vs_real": fid(feats, real_ref[:n], real_held[:n]),
        "eval/cas": float((predict(classifier, gen_x) == np.asarray(gen_y)).mean()),
    }


class DomainMetrics(PeriodicSampling):
    def __init__(
        self,
        every_n_steps: int = 2000,
        n_per_class: int = 32,
        sampler: str = "ddim",
        steps: int | None = None,
        guidance: float = 2.0,
        classifier: dict | None = None,
        cache_dir: str | None = None,
        seed: int = 0,
    ):
        super().__init__(every_n_steps, n_per_class, sampler, steps, guidance, seed)
        self.cfg = ClassifierConfig.make(classifier)
        self.cache_dir = cache_dir
        self._ready = False

    def _setup(self, trainer) -> None:
        from latent_diffusion.metrics.suite import stack_split

        dm = trainer.datamodule
        train = stack_split(dm.dataset("train"))
        test = stack_split(dm.dataset("test"))
        self.classifier, meta = load_or_train_domain_classifier(
            train, test, dm.class_names, dm.fingerprint(), self.cfg, self.cache_dir
        )
        self.feats = DomainFeatures(self.classifier)
        g = torch.Generator().manual_seed(self.seed)
        n = self.n_per_class * len(dm.class_names)
        self.ref = train[0][torch.randperm(len(train[0]), generator=g)[:n]]
        held = torch.cat([stack_split(dm.dataset("val"))[0], test[0]])
        self.held = held[torch.randperm(len(held), generator=g)[:n]]
        log.info(
            "domain metrics: classifier real test accuracy %.3f, %d images per check",
            meta["test_accuracy"],
            n,
        )
        self._ready = True

    def on_fit_start(self, trainer, pl_module) -> None:
        super().on_fit_start(trainer, pl_module)
        # The classifier (trained here when evaluate has not cached it yet) before the first
        # step, so its cost and any error come at the start, not in the middle of a run.
        if self.every_n_steps > 0 and trainer.is_global_zero and not self._ready:
            with torch.enable_grad(), torch.inference_mode(False):
                self._setup(trainer)

    def on_sampling_step(self, trainer, pl_module, step: int) -> None:
        if not self._ready:
            with torch.enable_grad():  # training the classifier needs autograd
                self._setup(trainer)
        x = from_uint8(self.sample_images(pl_module))  # (N, C, H, W) on the 8-bit grid, in [-1, 1]
        scores = domain_scores(
            self.classifier, self.feats, self.ref, self.held, x, np.array(self.labels(pl_module))
        )
        for logger in trainer.loggers:
            logger.log_metrics(scores, step=step)
        log.info("step %d: %s", step, {k_: round(v, 4) for k_, v in scores.items()})
