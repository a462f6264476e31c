"""The layering of docs/architecture.md, checked on the source: each package imports only
what sits below it. Static (ast over every file, imports inside functions included), so it
costs milliseconds and names the offending file and line."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "latent_diffusion"
FRAMEWORKS = ("lightning", "pytorch_lightning", "hydra", "omegaconf", "wandb")
OURS = (
    "data",
    "diffusion",
    "models",
    "vae",
    "lit",
    "metrics",
    "benchmarks",
    "pipeline",
    "inference",
    "sampling",
    "sample_writer",
    "validation",
    "inspect",
    "train",
    "train_vae",
    "train_classifier",
    "distill",
    "sample",
    "evaluate",
    "simulate",
    "study",
    "bench",
    "demo",
    "sweeps",
    "utils",
)

# the pipeline loads without Lightning, Hydra or the training side (docs/architecture.md)
PIPELINE_RULE = (
    "lightning",
    "pytorch_lightning",
    "hydra",
    "latent_diffusion.lit",
    "latent_diffusion.data",
    "latent_diffusion.sampling",
    "latent_diffusion.metrics",
)

# package -> what it must never import (top-level module names, or latent_diffusion.<part>)
FORBIDDEN = {
    "diffusion": FRAMEWORKS
    + tuple(f"latent_diffusion.{p}" for p in OURS if p not in ("diffusion", "utils")),
    "models": FRAMEWORKS
    + tuple(f"latent_diffusion.{p}" for p in OURS if p not in ("models", "utils")),
    "utils": FRAMEWORKS[:2] + tuple(f"latent_diffusion.{p}" for p in OURS if p != "utils"),
    "data": tuple(
        f"latent_diffusion.{p}"
        for p in (
            "lit",
            "diffusion",
            "models",
            "vae",
            "pipeline",
            "sampling",
            "metrics",
            "benchmarks",
            "validation",
        )
    ),
    # checks run before any expensive work: they may read data/'s constants, never build models
    "validation": ("lightning", "pytorch_lightning")
    + tuple(
        f"latent_diffusion.{p}"
        for p in (
            "lit",
            "diffusion",
            "models",
            "vae",
            "pipeline",
            "sampling",
            "metrics",
            "benchmarks",
        )
    ),
    "pipeline.py": PIPELINE_RULE,
    # the pipeline's speed switches: loaded with it, so under the same rule
    "inference.py": PIPELINE_RULE,
}


def _imports(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


def _violations(part: str) -> list[str]:
    target = PKG / part
    files = [target] if target.is_file() else sorted(target.rglob("*.py"))
    assert files, f"no source under {target}"
    bad = []
    for f in files:
        for line, mod in _imports(f):
            for ban in FORBIDDEN[part]:
                if mod == ban or mod.startswith(ban + "."):
                    bad.append(f"{f.relative_to(PKG.parent)}:{line} imports {mod}")
    return bad


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_package_imports_only_what_sits_below_it(part):
    assert _violations(part) == []


def test_the_check_sees_a_violation(tmp_path, monkeypatch):
    """The rule table can fail: a diffusion file importing Lightning is reported with its line."""
    fake = tmp_path / "latent_diffusion" / "diffusion"
    fake.mkdir(parents=True)
    (fake / "bad.py").write_text("import torch\n\ndef f():\n    import lightning as L\n")
    monkeypatch.setattr(__import__(__name__), "PKG", tmp_path / "latent_diffusion")
    assert _violations("diffusion") == ["latent_diffusion/diffusion/bad.py:4 imports lightning"]
