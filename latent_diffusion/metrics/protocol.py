"""Downstream-classification protocol: TRTR, CAS / TRTS, TSTR, augmentation curve.

  TRTR  train real, test real: the domain classifier on the real test split (the reference)
  CAS   train real, test synthetic (Ravuri & Vinyals 2019): the same classifier on the
        generated images, scored against the labels they were generated for
  TSTR  train synthetic, test real (Esteban et al. 2017): a fresh classifier, same
        architecture and step budget, trained on generated images only, as many per
        class as the real training split has (or all there are), tested on real test
  augmentation curve: for each real fraction f and multiplier m, a classifier on a
        seeded stratified f-subset of the real training split plus m x that many
        generated images, tested on real test; mean +- std over seeds. The gain at
        small f is what a user with little data gets from the generator.

Every classifier trains for the same number of optimiser steps (classifier.py),
so the data, not the compute, makes the differences.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from latent_diffusion.metrics.classifier import ClassifierConfig, predict, train_classifier

log = logging.getLogger(__name__)


def classification_report(y_true, y_pred, class_names) -> dict:
    """Accuracy, macro-F1, per-class precision / recall (= per-class accuracy) / F1, confusion
    matrix."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    k = len(class_names)
    cm = np.zeros((k, k), np.int64)  # rows: true class, columns: predicted
    np.add.at(cm, (y_true, y_pred), 1)
    tp = np.diag(cm).astype(np.float64)
    prec = np.divide(tp, cm.sum(0), out=np.zeros(k), where=cm.sum(0) > 0)
    rec = np.divide(tp, cm.sum(1), out=np.zeros(k), where=cm.sum(1) > 0)
    f1 = np.divide(2 * prec * rec, prec + rec, out=np.zeros(k), where=(prec + rec) > 0)
    present = cm.sum(1) > 0  # macro-F1 over the classes that occur in y_true
    return {
        "accuracy": float(tp.sum() / max(len(y_true), 1)),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "n": len(y_true),
        "per_class": {
            c: {
                "accuracy": float(rec[i]),
                "precision": float(prec[i]),
                "f1": float(f1[i]),
                "n": int(cm[i].sum()),
            }
            for i, c in enumerate(class_names)
        },
        "confusion": cm.tolist(),
    }


def stratified_subset(
    y,
    per_class: dict[int, int] | np.ndarray,
    rng: np.random.Generator,
    replace_if_short: bool = False,
) -> np.ndarray:
    """Indices with `per_class[c]` items of each class c, drawn without replacement
    (with replacement only where a class has fewer items and replace_if_short)."""
    y = np.asarray(y)
    out = []
    for c, n in enumerate(per_class):
        idx = np.flatnonzero(y == c)
        n = int(n)
        if n <= 0 or len(idx) == 0:
            continue
        if n <= len(idx):
            out.append(rng.choice(idx, n, replace=False))
        elif replace_if_short:
            out.append(
                np.concatenate([rng.permutation(idx), rng.choice(idx, n - len(idx), replace=True)])
            )
        else:
            out.append(idx)
    return np.sort(np.concatenate(out)) if out else np.zeros(0, np.int64)


def counts(y, k: int) -> np.ndarray:
    return np.bincount(np.asarray(y), minlength=k)


def cas(model, gen_x, gen_y, class_names) -> dict:
    return classification_report(gen_y, predict(model, gen_x), class_names)


def tstr(
    gen_x, gen_y, train_y, test_x, test_y, class_names, cfg: ClassifierConfig, seed: int = 0
) -> dict:
    """Train on generated only (per class as many as the real training split), test on real."""
    k = len(class_names)
    want = np.minimum(counts(gen_y, k), counts(train_y, k))
    idx = stratified_subset(gen_y, want, np.random.default_rng(seed))
    model = train_classifier(
        gen_x[idx], torch.as_tensor(np.asarray(gen_y)[idx]), k, cfg, seed=cfg.seed
    )
    rep = classification_report(test_y, predict(model, test_x), class_names)
    rep["n_train"] = len(idx)
    return rep


CLASSICAL_KEYS = ("time_shift", "doppler_shift", "frequency_disturbance", "mixup")


def arm_label(arm: str) -> str:
    """'0' -> real only, 'classical' -> real + classical, '2' -> +2x synthetic, '2+classical' ->
    both."""
    if arm == "0":
        return "real only"
    if arm == "classical":
        return "real + classical"
    m, _, extra = arm.partition("+")
    return f"+{m}x synthetic" + (" + classical" if extra else "")


def paired_difference(a, b) -> dict:
    """Mean of a - b over paired runs (same subset and classifier seed) with a 95% Student-t
    interval."""
    from scipy import stats

    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    n = len(d)
    mean = float(d.mean()) if n else float("nan")
    if n < 2:
        return {"mean": mean, "ci95": None, "n": n}
    half = float(stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / np.sqrt(n))
    return {"mean": mean, "ci95": [mean - half, mean + half], "n": n}


def augmentation_curve(
    train_x,
    train_y,
    gen_x,
    gen_y,
    test_x,
    test_y,
    class_names,
    cfg: ClassifierConfig,
    fractions=(0.1, 0.25, 0.5, 1.0),
    multipliers=(0, 1, 2, 4),
    seeds=(0, 1),
    classical: dict | None = None,
    generator: dict | None = None,
) -> dict:
    """{f: {"accuracy": {arm: {"mean", "std", "runs"}}, "paired": {arm: diff to real only}, "gain",
    "leak", "subset"}} on real test.

    The real images of cell (f, s) are splits.fraction_subset(train, f, s): the subset `train
    data.fraction=f data.fraction_seed=s` trains a generator on. `generator` describes the
    generator behind gen_x: {"fraction", "seed", "seen": indices into train it trained on}.
    Cells at the generator's own fraction use its subset (every classifier seed), so the
    synthetic images carry no real image the classifier did not get; every other cell
    counts the real images the generator saw and the classifier did not ("leak"). Without
    `generator` the generator is assumed to have seen the whole training split.
    classical: the ClassifierConfig fields of the "real + classical" arms (CLASSICAL_KEYS);
    None leaves those arms out.
    """
    from latent_diffusion.data.splits import fraction_subset

    k = len(class_names)
    train_y, gen_y = np.asarray(train_y), np.asarray(gen_y)
    seen = (
        np.arange(len(train_y))
        if generator is None or generator.get("seen") is None
        else np.asarray(generator["seen"])
    )
    ccfg = None
    if classical:
        bad = set(classical) - set(CLASSICAL_KEYS)
        if bad:
            from latent_diffusion.utils.errors import UserError

            raise UserError(
                f"protocol.classical: unknown {sorted(bad)}; choose from {list(CLASSICAL_KEYS)}"
            )
        import dataclasses

        ccfg = dataclasses.replace(cfg, **{kk: float(v) for kk, v in classical.items()})
    arms = ["0"] + (["classical"] if ccfg else []) + [str(m) for m in multipliers if m > 0]
    arms += [f"{m}+classical" for m in multipliers if m > 0 and ccfg]
    curve: dict = {}
    for f in fractions:
        own = (
            generator is not None
            and generator.get("fraction") is not None
            and abs(float(f) - float(generator["fraction"])) < 1e-9
        )
        runs: dict[str, list[float]] = {a: [] for a in arms}
        extra = []
        for s in seeds:
            ri = fraction_subset(train_y, f, int(generator["seed"]) if own else int(s), class_names)
            extra.append(int(np.setdiff1d(seen, ri).size))
            per_real = counts(train_y[ri], k)
            for a in arms:
                m = int(a.partition("+")[0]) if a[0].isdigit() else 0
                x, y = train_x[ri], train_y[ri]
                if m > 0:
                    # as many generated per class as m x the real ones; reused only if there are too
                    # few
                    rng = np.random.default_rng([int(s), int(round(f * 1000)), m])
                    gi = stratified_subset(gen_y, m * per_real, rng, replace_if_short=True)
                    x, y = torch.cat([x, gen_x[gi]]), np.concatenate([y, gen_y[gi]])
                c = ccfg if a.endswith("classical") else cfg
                model = train_classifier(x, torch.as_tensor(y), k, c, seed=int(s))
                runs[a].append(float((predict(model, test_x) == np.asarray(test_y)).mean()))
        row = {
            a: {"mean": float(np.mean(r)), "std": float(np.std(r)), "runs": r}
            for a, r in runs.items()
        }
        leak = max(extra)
        for a in arms:
            log.info(
                "augmentation: real %.0f%% %s -> accuracy %.3f +- %.3f%s",
                100 * f,
                arm_label(a),
                row[a]["mean"],
                row[a]["std"],
                "  [LEAKY]" if leak and a[0].isdigit() and a != "0" else "",
            )
        if leak and len(multipliers) > 1:
            log.warning(
                "LEAK: at real fraction %g the generator saw %d real training images that the "
                "augmented "
                "classifier did not; its synthetic rows are marked leaky. Train the generator with "
                "data.fraction=%g data.fraction_seed=S for a leak-free row",
                f,
                leak,
                f,
            )
        base = row["0"]["mean"]
        synth = [row[a]["mean"] - base for a in arms if a not in ("0", "classical")]
        curve[str(f)] = {
            "accuracy": row,
            "paired": {a: paired_difference(runs[a], runs["0"]) for a in arms if a != "0"},
            "gain": max(synth) if synth else None,
            "leak": {"leaky": leak > 0, "generator_saw_extra": leak},
            "subset": f"the generator's own (fraction {f:g}, seed {generator['seed']})"
            if own
            else f"fraction_subset(seed) per classifier seed {list(seeds)}",
        }
    return curve
