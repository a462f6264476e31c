"""Hydra multirun support (conf/hydra/default.yaml registers it under hydra.callbacks).

The sweep folder is `${paths.runs_dir}/<task>/multirun/<run_name>` and paths
resolve through `${hydra:runtime.cwd}`. Hydra sets the HydraConfig singleton
per job, but a sweeper/launcher resolves hydra.sweep.dir BEFORE the first job,
where `${hydra:...}` fails with "HydraConfig was not set". Setting it from the
multirun's own config at multirun start makes the same paths work there
(basic, Optuna and submitit sweeps alike); each job then sets its own as usual.
"""

from __future__ import annotations

from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class SweepPaths(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        HydraConfig.instance().set_config(config)


__all__ = ["SweepPaths"]
