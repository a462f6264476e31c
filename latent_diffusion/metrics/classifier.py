"""The domain classifier: a compact CNN trained on real spectrograms.

It plays three roles in the evaluation protocol (docs/evaluation.md):
  * TRTR reference: trained on the real training split, tested on real test;
  * CAS / TRTS judge: the same network classifies generated images
    (Ravuri & Vinyals 2019, "Classification Accuracy Score");
  * feature space for FID / KID / precision-recall: its penultimate layer
    replaces Inception, which cannot be downloaded here and has never seen a
    spectrogram (features.py).
The same architecture and step budget, trained on other data, gives TSTR and
the augmentation curve (protocol.py).

Training is a plain seeded torch loop (AdamW, cosine decay) over a fixed
number of optimiser steps: with a fixed step count, classifiers trained on 10 %
or 400 % of the data get the same compute, so accuracy differences come from
the data. The domain classifier is cached as safetensors + JSON keyed by a hash
of the data fingerprint and this config.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from latent_diffusion.data import classical_augment as ca
from latent_diffusion.utils.io import atomic_dir, stable_hash

log = logging.getLogger(__name__)
CLASSIFIER_VERSION = 1  # bump when the architecture or training loop changes: part of the cache key


@dataclass
class ClassifierConfig:
    width: int = (
        32  # channels of the first stage; features = 4 * width (128): enough for 8 classes,
    )
    #                  few enough that FID's covariance is estimable from a few hundred images
    steps: int = (
        600  # optimiser steps (~40 epochs of 8 x 200 images at batch 64; ~1 min on 2 cores)
    )
    batch_size: int = 64
    lr: float = 2e-3  # AdamW; cosine-decayed to 0 over `steps`
    weight_decay: float = 1e-4
    time_shift: float = 0.1  # random circular shift along time, as a fraction of the width: the
    #                          activity does not depend on when it starts in the window
    seed: int = 0
    # classical augmentation (data/classical_augment.py), off by default: the protocol's
    # "real + classical" arm turns them on (evaluate protocol.classical)
    doppler_shift: float = 0.0  # RadarSpecAugment frequency shift, fraction of the height
    frequency_disturbance: float = 0.0  # RadarSpecAugment per-column Doppler wander
    mixup: float = 0.0  # Beta(alpha, alpha) mixup of images and labels; 0 = off

    @classmethod
    def make(cls, cfg) -> ClassifierConfig:
        if isinstance(cfg, cls):
            return cfg
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in dict(cfg or {}).items() if k in fields})


# ----------------------------------------------------------------------- network


def _block(cin: int, cout: int) -> nn.Sequential:
    # One stride-2 conv per stage: the CPU budget (a few ms per image on a shared
    # core) matters more than the last point of accuracy for a metric network.
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.SiLU()
    )


class SpectrogramCNN(nn.Module):
    """(B, C, H, W) in [-1, 1] -> logits (B, K); `features` gives the (B, 4 * width) penultimate
    layer.

    Four stride-2 stages (64 -> 4, 128 -> 8) and global average pooling, so one
    network serves every image size."""

    def __init__(self, num_classes: int, width: int = 32, channels: int = 1):
        super().__init__()
        self.num_classes, self.width, self.channels = int(num_classes), int(width), int(channels)
        w = self.width
        self.body = nn.Sequential(
            _block(channels, w),
            _block(w, 2 * w),
            _block(2 * w, 4 * w),
            _block(4 * w, 4 * w),
            nn.Conv2d(4 * w, 4 * w, 3, padding=1, bias=False),
            nn.BatchNorm2d(4 * w),
            nn.SiLU(),
        )
        self.num_features = 4 * w
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(self.num_features, self.num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)  # (B, 4w, H/16, W/16)
        return h.mean(dim=(2, 3))  # (B, 4w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, K)


# ---------------------------------------------------------------------- training


def train_classifier(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    cfg: ClassifierConfig | dict | None = None,
    seed: int | None = None,
) -> SpectrogramCNN:
    """Train a fresh SpectrogramCNN on (N, C, H, W) images in [-1, 1] and labels (N,); returns it in
    eval mode."""
    cfg = ClassifierConfig.make(cfg)
    seed = cfg.seed if seed is None else int(seed)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # weight init and dropout
    model = SpectrogramCNN(num_classes, cfg.width, x.shape[1])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / cfg.steps))
    )
    x, y = x.float(), torch.as_tensor(y, dtype=torch.long)
    n, w = len(y), x.shape[-1]
    bs = min(cfg.batch_size, n)
    model.train()
    perm, pos = torch.randperm(n, generator=g), 0
    for _ in range(cfg.steps):
        if pos + bs > n:  # a fresh permutation per epoch
            perm, pos = torch.randperm(n, generator=g), 0
        idx = perm[pos : pos + bs]
        pos += bs
        xb = x[idx]  # (b, C, H, W)
        if cfg.time_shift > 0:
            shift = int(
                torch.randint(
                    -int(cfg.time_shift * w), int(cfg.time_shift * w) + 1, (1,), generator=g
                )
            )
            xb = torch.roll(xb, shift, dims=-1)
        target = y[idx]
        if cfg.doppler_shift > 0 or cfg.frequency_disturbance > 0:
            xb = ca.apply_per_image(
                xb, doppler=cfg.doppler_shift, disturbance=cfg.frequency_disturbance, g=g
            )
        if cfg.mixup > 0:
            xb, target = ca.mixup(xb, target, num_classes, cfg.mixup, g)  # soft targets (b, K)
        loss = nn.functional.cross_entropy(model(xb), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval().requires_grad_(False)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Predicted class index (N,) for images (N, C, H, W) in [-1, 1]."""
    model.eval()
    out = [model(x[i : i + batch_size].float()).argmax(1) for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0, np.int64)


# --------------------------------------------------------------- cached artifact


def classifier_key(data_fingerprint: dict, cfg: ClassifierConfig) -> str:
    conf = dataclasses.asdict(cfg)
    for k in (
        "doppler_shift",
        "frequency_disturbance",
        "mixup",
    ):  # added later: off keeps old keys valid
        if not conf[k]:
            conf.pop(k)
    return stable_hash(
        {"data": data_fingerprint, "classifier": conf, "version": CLASSIFIER_VERSION}
    )


def load_or_train_domain_classifier(
    train,
    test,
    class_names,
    data_fingerprint: dict,
    cfg: ClassifierConfig | dict | None = None,
    cache_dir=None,
):
    """(model, meta): the real-trained classifier, from `cache_dir/domain_classifier/<key>/` when
    there.

    train, test: (x (N, C, H, W), y (N,)) tensors. meta holds the config, the
    class names and the real test accuracy (TRTR) measured when it was trained."""
    cfg = ClassifierConfig.make(cfg)
    key = classifier_key(data_fingerprint, cfg)
    folder = None if cache_dir is None else Path(cache_dir) / "domain_classifier" / key
    if folder is not None and (folder / "meta.json").is_file():
        meta = json.loads((folder / "meta.json").read_text())
        model = SpectrogramCNN(len(class_names), cfg.width, train[0].shape[1])
        model.load_state_dict(load_file(folder / "model.safetensors"))
        log.info(
            "domain classifier from %s (real test accuracy %.3f)", folder, meta["test_accuracy"]
        )
        return model.eval().requires_grad_(False), meta
    t0 = time.time()
    model = train_classifier(train[0], train[1], len(class_names), cfg)
    acc = float((predict(model, test[0]) == test[1].numpy()).mean())
    meta = {
        "version": CLASSIFIER_VERSION, "key": key, "config": dataclasses.asdict(cfg),
        "class_names": list(class_names), "num_features": model.num_features,
        "n_train": len(train[1]), "n_test": len(test[1]), "test_accuracy": acc,
        "train_seconds": round(time.time() - t0, 1), "data": data_fingerprint,
    }  # fmt: skip
    log.info(
        "trained the domain classifier in %.0f s: real test accuracy %.3f", time.time() - t0, acc
    )
    if folder is not None:
        with atomic_dir(folder) as tmp:
            save_file(
                {k: v.contiguous() for k, v in model.state_dict().items()},
                tmp / "model.safetensors",
            )
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")
    return model, meta
