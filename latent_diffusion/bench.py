"""python -m latent_diffusion.bench out_dir=D
[parts=[train,batch,data,vae,sample,inference,student,resolution,gpu_switches,profile]]

Performance of the whole pipeline measured side by side in one process
(latent_diffusion/benchmarks/): writes D/bench.json and D/bench.md.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from latent_diffusion.utils.config_errors import report_config_errors
from latent_diffusion.utils.errors import UserError, report_user_errors
from latent_diffusion.validation import preflight


def with_quick(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """quick=true: conf/bench.yaml's quick_settings go over the defaults (tiny model, few
    rounds), and the command line's own overrides (`key=value`) over both."""
    if not cfg.quick:
        return cfg
    OmegaConf.set_struct(cfg, False)
    cli = [o.lstrip("+") for o in overrides if "=" in o and not o.startswith("~")]
    return OmegaConf.merge(cfg, cfg.quick_settings, OmegaConf.from_dotlist(cli))


@report_config_errors
@hydra.main(version_base="1.3", config_path="../conf", config_name="bench")
@report_user_errors
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from latent_diffusion.benchmarks import PART_NAMES

    bad = [p for p in cfg.parts if p not in PART_NAMES]
    if bad:  # before importing torch & co: a typo answers in a second
        raise UserError(
            f"parts={list(cfg.parts)}: unknown part(s) {bad}; choose from {list(PART_NAMES)}"
        )
    from latent_diffusion.benchmarks.runner import run_bench

    cfg = with_quick(cfg, list(HydraConfig.get().overrides.task))
    preflight("bench", cfg)

    result = run_bench(cfg, argv=sys.argv[1:])
    for name, s in result["summary"].items():
        print(
            f"{name}: {s['value']:.3f} (target {s['target']}, {'met' if s['met'] else 'NOT met'})"
        )
    print(f"wrote {cfg.out_dir}/bench.json and bench.md")


if __name__ == "__main__":
    main()
