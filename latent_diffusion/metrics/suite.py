"""The whole evaluation: real data + generated set -> one metrics dict (report.py writes it).

Which real images each part uses (docs/evaluation.md explains why):
  classifier / TRTR / CAS   domain classifier trained on real train, scored on real test / generated
  TSTR, augmentation        fresh classifiers, always scored on real test
  FID / KID / P-R           reference = n real *train* images; candidates of exactly n images:
                            generated, real held-out (val + test: real-vs-real) and the same
                            held-out
                            images through the VAE and back (the VAE ceiling)
  kinematics                generated vs real train per class; real held-out vs real train beside it
  memorisation              generated -> train vs real test -> train, pixels and features
Real pixels are quantised to 8 bits like generated PNGs, so bit depth is not a difference.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from latent_diffusion.metrics import distances, kinematics, memorisation, protocol
from latent_diffusion.metrics.classifier import ClassifierConfig, load_or_train_domain_classifier
from latent_diffusion.metrics.features import DomainFeatures, extract_features
from latent_diffusion.metrics.generated import load_generated
from latent_diffusion.utils.errors import UserError
from latent_diffusion.utils.pixels import quantize_8bit

log = logging.getLogger(__name__)
PARTS = ("classifier", "tstr", "augmentation", "distances", "kinematics", "memorisation")


def stack_split(ds) -> tuple[torch.Tensor, torch.Tensor]:
    if len(ds) == 0:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long)
    xs, ys = zip(*(ds[i] for i in range(len(ds))), strict=True)
    return quantize_8bit(torch.stack(xs).float()), torch.as_tensor(ys, dtype=torch.long)


def load_vae(cfg: DictConfig):
    """The VAE for the ceiling reference: the one a run= export names (its weights hash checked;
    vae_path= overrides where it lives), else vae_path=, else None."""
    path = cfg.get("vae_path")
    if cfg.get("run"):
        from latent_diffusion.pipeline import LatentDiffusionPipeline

        vae = LatentDiffusionPipeline.load_vae(cfg.run, vae_path=path)
        if vae is not None:
            return vae
    if path is None:
        return None
    from latent_diffusion.vae.interface import FrozenVAE, LatentStatsWarning

    with (
        warnings.catch_warnings()
    ):  # encode + decode: shift / scale cancel, their values do not matter
        warnings.simplefilter("ignore", LatentStatsWarning)
        return FrozenVAE.load(path, data_channels=1)


@torch.no_grad()
def vae_roundtrip(vae, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    out = [
        vae.decode(vae.encode(x[i : i + batch_size], sample=False))
        for i in range(0, len(x), batch_size)
    ]
    return quantize_8bit(torch.cat(out))


def kin_params(cfg: DictConfig, source) -> dict:
    """kinematic_stats' axes: `kinematics.*` > the source's radar > `real.*` > the simulator's."""
    return kinematics.data_axes(source, cfg.real, cfg.kinematics)[0]


def evaluate(cfg: DictConfig) -> dict:
    parts = list(PARTS) if cfg.parts is None else [str(p) for p in cfg.parts]
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise UserError(f"parts={parts}: unknown {bad}; choose from {list(PARTS)}")
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    t0 = time.time()
    dm = instantiate(cfg.real)
    src, names = dm.source, list(dm.class_names)
    train, val, test = (stack_split(src.split(s)) for s in ("train", "val", "test"))
    if len(test[1]) == 0:
        raise UserError(
            "the real test split is empty: give the real data a test split (real.test_per_class / "
            "real.test_fraction)"
        )
    log.info("real data loaded in %.0f s", time.time() - t0)
    gen_x, gen_y, gen_counts = load_generated(
        cfg.generated, names, int(src.image_size), bool(cfg.resize)
    )
    n_min = int(cfg.min_samples)
    if len(gen_y) < n_min:
        raise UserError(
            f"generated={cfg.generated} holds {len(gen_y)} images; the distances need at least "
            f"{n_min} (min_samples): sample n_per_class >= {math.ceil(n_min / len(names))}"
        )
    out: dict = {
        "classes": names,
        "real": {
            "fingerprint": dm.fingerprint(),
            "n_train": len(train[1]),
            "n_val": len(val[1]),
            "n_test": len(test[1]),
        },
        "generated": {
            "path": str(cfg.generated),
            "n": len(gen_y),
            "per_class": {c: int(n) for c, n in zip(names, gen_counts, strict=True)},
        },
        "config": _config(cfg),
        "arrays": {},  # not written to JSON: plots only
    }
    missing = [c for c, n in zip(names, gen_counts, strict=True) if n == 0]
    if missing:
        log.warning(
            "generated set has no images of classes %s: their per-class numbers are empty", missing
        )
    ccfg = ClassifierConfig.make(OmegaConf.to_container(cfg.classifier))
    model, meta = load_or_train_domain_classifier(
        train, test, names, dm.fingerprint(), ccfg, cfg.cache_dir
    )
    feats = DomainFeatures(model)
    if "classifier" in parts:
        out["trtr"] = protocol.cas(model, test[0], test[1].numpy(), names)
        out["cas"] = protocol.cas(model, gen_x, gen_y.numpy(), names)
        out["cas"]["ratio_to_trtr"] = out["cas"]["accuracy"] / max(out["trtr"]["accuracy"], 1e-12)
        out["classifier"] = {
            k_: meta[k_] for k_ in ("key", "config", "num_features", "n_train", "test_accuracy")
        }
    sift_cfg = cfg.get("sift") or {}
    keep = None
    if sift_cfg.get("enabled"):
        from latent_diffusion.metrics.sifting import sift

        keep, out["sifting"] = sift(
            gen_x,
            gen_y.numpy(),
            train[0],
            train[1].numpy(),
            names,
            kin_params(cfg, src),
            model=model,
            kinematics=bool(sift_cfg.get("kinematics", True)),
            margin=float(sift_cfg.get("margin", 0.1)),
            min_confidence=sift_cfg.get("min_confidence"),
        )
    pcfg = ClassifierConfig.make(
        {**OmegaConf.to_container(cfg.classifier), **OmegaConf.to_container(cfg.protocol)}
    )
    if "tstr" in parts:
        log.info("TSTR: training on generated images (%.0f s so far)", time.time() - t0)
        out["tstr"] = protocol.tstr(
            gen_x, gen_y.numpy(), train[1].numpy(), test[0], test[1].numpy(), names, pcfg
        )
        trtr_p = protocol.tstr(
            train[0], train[1].numpy(), train[1].numpy(), test[0], test[1].numpy(), names, pcfg
        )
        out["tstr"]["trtr_same_budget"] = trtr_p[
            "accuracy"
        ]  # same steps as TSTR: the fair reference
    if "augmentation" in parts:
        log.info("augmentation curve (%.0f s so far)", time.time() - t0)
        a = cfg.augmentation
        gen_info = generator_subset(cfg, dm, src.split("train"), names)
        fractions = [float(f) for f in a.fractions]
        if gen_info.get("fraction") is not None and a.get("match_generator", True):
            fractions = [float(gen_info["fraction"])]
            log.info(
                "augmentation: the generator trained on fraction %g (seed %d) of the real "
                "training split; "
                "the augmented classifiers train on that same subset "
                "(augmentation.match_generator=false "
                "for the fractions %s instead)",
                gen_info["fraction"],
                gen_info["seed"],
                list(a.fractions),
            )
        classical = OmegaConf.to_container(a.classical) if a.get("classical") else None
        out["augmentation"] = protocol.augmentation_curve(
            train[0],
            train[1].numpy(),
            gen_x,
            gen_y.numpy(),
            test[0],
            test[1].numpy(),
            names,
            pcfg,
            fractions,
            [int(m) for m in a.multipliers],
            [int(s) for s in a.seeds],
            classical=classical,
            generator=gen_info,
        )
        if (
            keep is not None
        ):  # the same curve with only the images sifting kept (metrics/sifting.py)
            kept = torch.as_tensor(np.flatnonzero(keep))
            if np.bincount(gen_y.numpy()[keep], minlength=len(names)).min() == 0:
                log.warning(
                    "sifting left a class without generated images: its sifted rows add none of it"
                )
            out["augmentation_sifted"] = protocol.augmentation_curve(
                train[0],
                train[1].numpy(),
                gen_x[kept],
                gen_y.numpy()[keep],
                test[0],
                test[1].numpy(),
                names,
                pcfg,
                fractions,
                [int(m) for m in a.multipliers],
                [int(s) for s in a.seeds],
                classical=classical,
                generator=gen_info,
            )
        out["generator_data"] = {k_: v for k_, v in gen_info.items() if k_ != "seen"}
    if "distances" in parts:
        log.info("distances (%.0f s so far)", time.time() - t0)
        out["distances"] = _distances(cfg, feats, train, val, test, gen_x, gen_y, names)
    if "kinematics" in parts:
        log.info("kinematics (%.0f s so far)", time.time() - t0)
        kp = kin_params(cfg, src)
        ks = {
            name: kinematics.kinematic_stats(x.numpy(), **kp)
            for name, x in (
                ("gen", gen_x),
                ("train", train[0]),
                ("heldout", torch.cat([val[0], test[0]])),
            )
        }
        held_y = torch.cat([val[1], test[1]]).numpy()
        out["kinematics"] = {
            "params": kp,
            "per_class": kinematics.kinematic_fidelity(
                ks["gen"],
                gen_y.numpy(),
                ks["train"],
                train[1].numpy(),
                names,
                ks["heldout"],
                held_y,
            ),
        }
        out["arrays"]["kinematics"] = {
            "gen": (ks["gen"], gen_y.numpy()),
            "real": (ks["train"], train[1].numpy()),
        }
    if "memorisation" in parts:
        f_gen, f_test, f_train = (extract_features(feats, x) for x in (gen_x, test[0], train[0]))
        out["memorisation"] = memorisation.memorisation(
            gen_x, test[0], train[0], f_gen, f_test, f_train
        )
    out["arrays"]["images"] = {"gen": (gen_x, gen_y.numpy()), "real": (train[0], train[1].numpy())}
    out["seconds"] = round(time.time() - t0, 1)
    return out


def _generator_export(cfg: DictConfig):
    """export.json of the generator: run=, else the export a `sample` folder's metadata.json
    names."""
    import json
    from pathlib import Path

    from latent_diffusion.pipeline import find_export

    if cfg.get("run"):
        return json.loads((find_export(cfg.run) / "export.json").read_text())
    gen = Path(str(cfg.generated))
    meta = (gen if gen.is_dir() else gen.parent) / "metadata.json"
    if meta.is_file():
        exp = json.loads(meta.read_text()).get("export")
        if exp and (Path(exp) / "export.json").is_file():
            return json.loads((Path(exp) / "export.json").read_text())
    return None


def generator_subset(cfg: DictConfig, dm, train_ds, names) -> dict:
    """Which real training images the generator saw: {"fraction", "seed", "seen", "known",
    "vae_data"}.

    Read from the generator's export (train records data.fraction / fraction_seed and the
    fingerprint of the item list); the subset is drawn again here and must hash the same,
    so the classifiers are trained on exactly the generator's images. Unknown (a folder
    not written by `sample`, an export from before the record): the whole training split."""
    from latent_diffusion.data.datamodule import split_item_ids, split_labels
    from latent_diffusion.data.splits import fraction_subset, subset_fingerprint

    meta = _generator_export(cfg)
    rec = (meta or {}).get("data_subset")
    if not rec:
        log.warning(
            "LEAK CHECK: the generator's training data is unknown (no data_subset record in its "
            "export; "
            "pass run=<training run>): assuming it saw the whole real training split, so every "
            "augmented row below 100%% real data is marked leaky"
        )
        return {"fraction": None, "seed": None, "seen": None, "known": False}
    # as the export stores it: JSON turns the hard preset's tuples into lists, and a tuple
    # never equals a list, so a fresh fingerprint would never match its own record
    full = json.loads(
        json.dumps({k: v for k, v in dm.fingerprint().items() if k != "train_fraction"})
    )
    if rec.get("data_fingerprint") is not None and rec["data_fingerprint"] != full:
        diff = sorted(
            k
            for k in set(full) | set(rec["data_fingerprint"])
            if full.get(k) != rec["data_fingerprint"].get(k)
        )
        raise UserError(
            f"the generator was trained on other real data than real= describes (differs in "
            f"{diff}): "
            "evaluate against the data config it was trained with, or the subset check is "
            "meaningless"
        )
    labels = split_labels(train_ds)
    idx = fraction_subset(labels, rec["fraction"], rec["seed"], names)
    ids = split_item_ids(train_ds)
    if subset_fingerprint([ids[i] for i in idx]) != rec["fingerprint"]:
        raise UserError(
            f"the generator's training subset (fraction {rec['fraction']}, seed {rec['seed']}, "
            f"fingerprint {rec['fingerprint']}) cannot be drawn again from this real training "
            f"split: "
            "its file list differs from the one the generator was trained on"
        )
    log.info(
        "the generator trained on %d real training images (fraction %g, seed %d, fingerprint %s)",
        len(idx),
        rec["fraction"],
        rec["seed"],
        rec["fingerprint"],
    )
    return {
        "fraction": float(rec["fraction"]),
        "seed": int(rec["seed"]),
        "seen": idx,
        "known": True,
        "n": len(idx),
        "fingerprint": rec["fingerprint"],
        "vae_data": rec.get("vae_data"),
    }


def _config(cfg: DictConfig) -> dict:
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # ${hydra:...} outside a Hydra app (library use): keep the interpolations
        return OmegaConf.to_container(cfg, resolve=False)


def _distances(cfg, feats, train, val, test, gen_x, gen_y, names) -> dict:
    """Overall and per class: generated / real-vs-real / VAE ceiling against one real reference,
    same n."""
    d = cfg.distances
    held_x, held_y = torch.cat([val[0], test[0]]), torch.cat([val[1], test[1]])
    vae = load_vae(cfg)
    rng = np.random.default_rng(int(cfg.seed))
    n = min(len(gen_y), len(held_y), len(train[1]), int(d.max_n or 10**9))
    if n < 2:
        raise UserError(
            "too few images for FID: need at least 2 generated and 2 held-out real images"
        )
    ri, hi, gi = (rng.permutation(m)[:n] for m in (len(train[1]), len(held_y), len(gen_y)))
    kw = {"k": int(d.k), "kid_subsets": int(d.kid_subsets), "seed": int(cfg.seed)}
    ref = train[0][ri]
    res = {
        "n": n,
        "reference": "real train",
        "overall": {
            "generated": distances.compare(feats, ref, gen_x[gi], **kw),
            "real_vs_real": distances.compare(feats, ref, held_x[hi], **kw),
        },
    }
    if vae is not None:
        log.info("VAE ceiling: %d held-out images through %s", n, vae.path)
        res["overall"]["vae_ceiling"] = distances.compare(
            feats, ref, vae_roundtrip(vae, held_x[hi]), **kw
        )
        res["vae_path"] = str(vae.path)
    # Per class: FID only (KID / P-R need more images than a class has), matched n per class.
    per = {}
    for ci, c in enumerate(names):
        idx = [np.flatnonzero(y.numpy() == ci) for y in (train[1], held_y, gen_y)]
        nc = min(len(i) for i in idx)
        if nc < int(d.min_per_class):
            per[c] = {"n": nc}
            continue
        r_, h_, g_ = (rng.permutation(i)[:nc] for i in idx)
        per[c] = {
            "n": nc,
            "generated": distances.fid(feats, train[0][r_], gen_x[g_]),
            "real_vs_real": distances.fid(feats, train[0][r_], held_x[h_]),
        }
        if vae is not None:
            per[c]["vae_ceiling"] = distances.fid(
                feats, train[0][r_], vae_roundtrip(vae, held_x[h_])
            )
    res["per_class_fid"] = per
    return res
