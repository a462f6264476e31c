"""`python -m latent_diffusion.bench`: the pipeline's speed measured side by side.

timing.py    warm-up, alternating repetitions, medians, peak memory
setup.py     the VAE, denoisers (latent and the paired pixel UNet), module, batches
training.py  train throughput (latent/pixel, cached/online, bf16), Lightning vs bare loop,
             batch scaling
data.py      simulator, DataLoader vs training step, VAE encode/decode
resolution.py  the 128x128 -> 4x32x32 path vs 64x64 -> 4x16x16: train, sample, decode
sampling.py  samplers with and without guidance, the cost of one guided forward
inference.py the sampling switches (channels_last, compile, bf16) and the time per stage
student.py   the distilled student (LCM, K steps) against its teacher (DPM-Solver++-20), end to end
gpu.py       GPU switches (CUDA only) and torch.profiler top items
report.py    headline ratios against their targets, Markdown
"""

# The part names, importable without torch (the entry point checks `parts` before the
# heavy imports); runner.PARTS maps each to its function.
PART_NAMES = (
    "train",
    "batch",
    "data",
    "vae",
    "sample",
    "inference",
    "student",
    "resolution",
    "gpu_switches",
    "profile",
)

__all__ = ["PART_NAMES"]
