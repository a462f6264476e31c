"""python -m latent_diffusion.sample run=<run dir or export dir> sampler=ddpm|ddim|dpmpp steps=N
       guidance=W n_per_class=K classes=[walk,fall] seed=S out_dir=D batch_size=B

Samples from a trained run's export (EMA denoiser + the VAE it names) and writes
D/grid.png, D/<class>/<class>_<index:05d>.png, D/samples.npz and D/metadata.json
(sampling.py has the details). Several processes: `torchrun --nproc_per_node=G -m
latent_diffusion.sample ...` splits the images over the ranks; rank 0 writes.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from latent_diffusion.utils.config_errors import report_config_errors
from latent_diffusion.utils.errors import report_user_errors
from latent_diffusion.validation import preflight


@report_config_errors
@hydra.main(version_base="1.3", config_path="../conf", config_name="sample")
@report_user_errors
def main(cfg: DictConfig) -> None:
    preflight("sample", cfg)
    from latent_diffusion.sampling import sample_run

    sample_run(cfg)


if __name__ == "__main__":
    main()
