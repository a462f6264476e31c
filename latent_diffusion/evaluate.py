"""python -m latent_diffusion.evaluate real=<data config> generated=<folder or npz> out_dir=D

Domain metrics of generated vs real spectrograms (docs/evaluation.md): TRTR, CAS,
TSTR, augmentation curve, FID / KID / precision-recall in a real-trained
classifier's feature space beside real-vs-real and VAE-ceiling references,
kinematic fidelity and memorisation. Writes D/metrics.json, D/report.md and
D/*.png. `real` is the data config group mounted at `real` (real=microdoppler,
real=image_folder real.root=DIR, real.n_per_class=...).
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from latent_diffusion.utils.config_errors import report_config_errors
from latent_diffusion.utils.errors import report_user_errors
from latent_diffusion.validation import preflight

log = logging.getLogger(__name__)


def run_evaluation(cfg: DictConfig) -> dict:
    from latent_diffusion.metrics.report import write_report
    from latent_diffusion.metrics.suite import evaluate

    metrics = evaluate(cfg)
    out = write_report(metrics, cfg.out_dir)
    log.info("wrote %s/metrics.json and report.md", out)
    return metrics


@report_config_errors
@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
@report_user_errors
def main(cfg: DictConfig) -> None:
    preflight("evaluate", cfg)
    run_evaluation(cfg)


if __name__ == "__main__":
    main()
