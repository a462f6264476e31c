"""Configs that need a package the project does not install: said before any work.

TensorBoard is a logger Lightning offers, not one of the project's dependencies (wandb and
CSV are); without it Lightning fails only when the logger is built, after the data and the
VAE, with an import error.
"""

from __future__ import annotations

from importlib.util import find_spec

from omegaconf import OmegaConf

from latent_diffusion.utils.errors import UserError

# logger class -> (modules any one of which will do, the package to install)
LOGGER_PACKAGES = {
    "TensorBoardLogger": (("tensorboard", "tensorboardX"), "tensorboard"),
}


def check_logger_packages(cfg) -> None:
    loggers = OmegaConf.select(cfg, "logger", default=None)
    if not loggers:
        return
    for name, node in loggers.items():
        target = str((node or {}).get("_target_", ""))
        need = LOGGER_PACKAGES.get(target.rsplit(".", 1)[-1])
        if need and not any(find_spec(m) for m in need[0]):
            raise UserError(
                f"logger={name} needs the {need[1]} package, which is not installed: "
                f"`pip install {need[1]}`, or choose logger=csv (or logger=wandb, offline by "
                "default)"
            )
