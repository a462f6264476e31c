"""python -m latent_diffusion.inspect data=<any data config> [data.root=DIR ...]

What the model will see, before any training (data/summary.py): items per split and class,
files skipped and why, plot-crop sizes and colour maps of figures, value ranges, the
physical axes, and a preview grid of the model inputs, printed and written to out_dir.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from latent_diffusion.utils.config_errors import report_config_errors
from latent_diffusion.utils.errors import report_user_errors
from latent_diffusion.validation import preflight

log = logging.getLogger(__name__)


def inspect_data(cfg: DictConfig) -> dict:
    from latent_diffusion.data import summary

    if cfg.data.get("strict"):
        # the summary lists every problem (skipped files, odd crops) instead of stopping at the
        # first, which is what data.strict=true does in training
        log.info("inspect reads with data.strict=false: problems are listed, not raised")
        with open_dict(cfg):
            cfg.data.strict = False
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup()
    s = summary.summarise(dm)
    print(summary.long_form(s))
    paths = summary.write(s, dm, Path(cfg.out_dir), int(cfg.preview_per_class))
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return s


@report_config_errors
@hydra.main(version_base="1.3", config_path="../conf", config_name="inspect")
@report_user_errors
def main(cfg: DictConfig) -> None:
    preflight("inspect", cfg)
    inspect_data(cfg)


if __name__ == "__main__":
    main()
