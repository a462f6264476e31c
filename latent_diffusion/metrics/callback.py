"""Quality during training: every K steps, sample N images per class and log domain FID and CAS.

Loss curves of diffusion models say little about sample quality; this callback
puts the evaluation suite's two headline numbers on the dashboard (wandb,
tensorboard, csv) as `eval/fid_domain`, `eval/fid_real_vs_real` (the floor at
this sample size) and `eval/cas`. The domain classifier is the cached artifact
of `evaluate` for the same data and classifier config (trained once on rank 0
at fit start if absent). Sampling uses fixed seeds, so successive values differ
because the model changed, not the noise. Only rank 0 samples and logs.

    callbacks.domain_metrics:
      _target_: latent_diffusion.metrics.callback.DomainMetrics
      every_n_steps: 2000
      n_per_class: 32
"""

from __future__ import annotations

import logging

import lightning as L
import numpy as np
import torch

from latent_diffusion.metrics.classifier import (
    ClassifierConfig,
    load_or_train_domain_classifier,
    predict,
)
from latent_diffusion.metrics.distances import fid
from latent_diffusion.metrics.features import DomainFeatures

log = logging.getLogger(__name__)


def domain_scores(classifier, feats, real_ref: torch.Tensor, real_held: torch.Tensor, gen_x: torch.Tensor,
                  gen_y) -> dict:
    """FID of generated and of held-out real against the same reference (all the same size), and CAS."""
    n = min(len(real_ref), len(real_held), len(gen_x))
    return {
        "eval/fid_domain": fid(feats, real_ref[:n], gen_x[:n]),
        "eval/fid_real_vs_real": fid(feats, real_ref[:n], real_held[:n]),
        "eval/cas": float((predict(classifier, gen_x) == np.asarray(gen_y)).mean()),
    }


class DomainMetrics(L.Callback):
    def __init__(self, every_n_steps: int = 2000, n_per_class: int = 32, sampler: str = "ddim", steps: int = 50,
                 guidance: float = 2.0, classifier: dict | None = None, cache_dir: str | None = None, seed: int = 0):
        self.every_n_steps, self.n_per_class = int(every_n_steps), int(n_per_class)
        self.sampler, self.steps, self.guidance = sampler, int(steps), float(guidance)
        self.cfg = ClassifierConfig.make(classifier)
        self.cache_dir, self.seed = cache_dir, int(seed)
        self._ready = False
        self._last = -1

    def _setup(self, trainer) -> None:
        from latent_diffusion.metrics.suite import stack_split

        dm = trainer.datamodule
        train = stack_split(dm.dataset("train"))
        test = stack_split(dm.dataset("test"))
        self.classifier, meta = load_or_train_domain_classifier(
            train, test, dm.class_names, dm.fingerprint(), self.cfg, self.cache_dir)
        self.feats = DomainFeatures(self.classifier)
        g = torch.Generator().manual_seed(self.seed)
        n = self.n_per_class * len(dm.class_names)
        self.ref = train[0][torch.randperm(len(train[0]), generator=g)[:n]]
        held = torch.cat([stack_split(dm.dataset("val"))[0], test[0]])
        self.held = held[torch.randperm(len(held), generator=g)[:n]]
        log.info("domain metrics: classifier real test accuracy %.3f, %d images per check",
                 meta["test_accuracy"], n)
        self._ready = True

    def on_fit_start(self, trainer, pl_module) -> None:
        # The classifier (trained here when evaluate has not cached it yet) before the first
        # step, so its cost and any error come at the start, not in the middle of a run.
        if self.every_n_steps > 0 and trainer.is_global_zero and not self._ready:
            with torch.enable_grad(), torch.inference_mode(False):
                self._setup(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0 and step != self._last:
            self._last = step
            if trainer.is_global_zero:
                self._check(trainer, pl_module, step)

    @torch.no_grad()
    def _check(self, trainer, pl_module, step: int) -> None:
        from latent_diffusion.metrics.suite import to_u8_grid

        if not self._ready:
            with torch.enable_grad():  # training the classifier needs autograd; _check is no_grad
                self._setup(trainer)
        was_training = pl_module.training
        k = len(pl_module.class_names)
        y = torch.arange(k, device=pl_module.device).repeat_interleave(self.n_per_class)
        gens = [torch.Generator().manual_seed(self.seed * 100003 + i) for i in range(len(y))]
        z = pl_module.sample_latents(y, self.sampler, self.steps, self.guidance, generators=gens)
        x = to_u8_grid(pl_module.decode(z.to(pl_module.device)).float().cpu())  # (N, 1, H, W)
        scores = domain_scores(self.classifier, self.feats, self.ref, self.held, x, y.cpu().numpy())
        for logger in trainer.loggers:
            logger.log_metrics(scores, step=step)
        log.info("step %d: %s", step, {k_: round(v, 4) for k_, v in scores.items()})
        pl_module.train(was_training)
