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
    """Accuracy, macro-F1, per-class precision / recall (= per-class accuracy) / F1, confusion matrix."""
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
        "per_class": {c: {"accuracy": float(rec[i]), "precision": float(prec[i]), "f1": float(f1[i]),
                          "n": int(cm[i].sum())} for i, c in enumerate(class_names)},
        "confusion": cm.tolist(),
    }


def stratified_subset(y, per_class: dict[int, int] | np.ndarray, rng: np.random.Generator,
                      replace_if_short: bool = False) -> np.ndarray:
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
            out.append(np.concatenate([rng.permutation(idx), rng.choice(idx, n - len(idx), replace=True)]))
        else:
            out.append(idx)
    return np.sort(np.concatenate(out)) if out else np.zeros(0, np.int64)


def counts(y, k: int) -> np.ndarray:
    return np.bincount(np.asarray(y), minlength=k)


def cas(model, gen_x, gen_y, class_names) -> dict:
    return classification_report(gen_y, predict(model, gen_x), class_names)


def tstr(gen_x, gen_y, train_y, test_x, test_y, class_names, cfg: ClassifierConfig, seed: int = 0) -> dict:
    """Train on generated only (per class as many as the real training split), test on real."""
    k = len(class_names)
    want = np.minimum(counts(gen_y, k), counts(train_y, k))
    idx = stratified_subset(gen_y, want, np.random.default_rng(seed))
    model = train_classifier(gen_x[idx], torch.as_tensor(np.asarray(gen_y)[idx]), k, cfg, seed=cfg.seed)
    rep = classification_report(test_y, predict(model, test_x), class_names)
    rep["n_train"] = len(idx)
    return rep


def augmentation_curve(train_x, train_y, gen_x, gen_y, test_x, test_y, class_names, cfg: ClassifierConfig,
                       fractions=(0.1, 0.25, 0.5, 1.0), multipliers=(0, 1, 2, 4), seeds=(0, 1)) -> dict:
    """{f: {"accuracy": {m: {"mean", "std", "runs"}}, "gain": best m > 0 minus m = 0}} on real test."""
    k = len(class_names)
    train_y, gen_y = np.asarray(train_y), np.asarray(gen_y)
    n_train = counts(train_y, k)
    curve: dict = {}
    for f in fractions:
        row = {}
        for m in multipliers:
            accs = []
            for s in seeds:
                rng = np.random.default_rng([int(s), int(round(f * 1000)), int(m)])
                per_real = np.maximum(1, np.round(f * n_train)).astype(int)
                ri = stratified_subset(train_y, per_real, np.random.default_rng([int(s), int(round(f * 1000))]))
                x, y = train_x[ri], train_y[ri]
                if m > 0:
                    # as many generated per class as m x the real ones; reused only if there are too few
                    gi = stratified_subset(gen_y, m * per_real, rng, replace_if_short=True)
                    x, y = torch.cat([x, gen_x[gi]]), np.concatenate([y, gen_y[gi]])
                model = train_classifier(x, torch.as_tensor(y), k, cfg, seed=int(s))
                accs.append(float((predict(model, test_x) == np.asarray(test_y)).mean()))
            row[str(m)] = {"mean": float(np.mean(accs)), "std": float(np.std(accs)), "runs": accs}
            log.info("augmentation: real %.0f%% + %dx synthetic -> accuracy %.3f +- %.3f",
                     100 * f, m, row[str(m)]["mean"], row[str(m)]["std"])
        base = row.get("0", {}).get("mean")
        gains = [v["mean"] - base for mm, v in row.items() if mm != "0"] if base is not None else []
        curve[str(f)] = {"accuracy": row, "gain": max(gains) if gains else None}
    return curve
