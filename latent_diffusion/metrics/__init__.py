"""Evaluation metrics for generated spectrograms (docs/evaluation.md).

classifier   domain CNN (TRTR reference, CAS judge, feature space), cached artifact
features     its penultimate layer as a frozen extractor for torchmetrics FID / KID
distances    FID / KID / k-NN precision-recall at matched sizes
kinematics   envelope statistics (max/min Doppler, torso, bandwidth, cadence), Wasserstein per class
memorisation nearest-training-image distances, generated vs held-out real
protocol     TRTR, CAS, TSTR, augmentation curve
generated    reading a sample folder / npz
suite        everything together; report writes metrics.json, report.md, figures
"""
