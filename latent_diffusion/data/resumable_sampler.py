"""The training order as a function of (seed, epoch, rank), and a position inside it.

A checkpoint taken inside an epoch is only bit-exact to resume if the rest of
that epoch sees the batches an uninterrupted run would have seen. A sampler
that draws its permutation from the global RNG when its iterator is built
(torch's RandomSampler) cannot promise that: the resumed run builds its
iterator at another point of the RNG stream, and does not know how far the old
iterator had got. Here the order of epoch e is DistributedSampler's
(`randperm(n)` seeded by seed + e, padded to a multiple of the world size,
every world_size-th index from this rank on), and the number of indices this
rank has trained on in the current epoch is part of the checkpoint: the
training loader is stateful (`state_dict` / `load_state_dict`, Lightning's
interface for resumable loaders, saved with the fit loop's state), and a
restored sampler starts the saved epoch at that position.

The position is counted in finished training steps, which the trainer knows
(`progress`); the sampler's own count runs ahead of it by the batches the
loader has prefetched.

Being a DistributedSampler, Lightning leaves it in place under DDP (it only
injects its own where a loader has none) and calls its `set_epoch`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch.utils.data import DataLoader, DistributedSampler


class ResumableSampler(DistributedSampler):
    """DistributedSampler(shuffle, seed, drop_last=False) that can begin an epoch mid-way."""

    def __init__(
        self, dataset, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True
    ):
        super().__init__(
            dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=False
        )
        self.resume_epoch: int | None = None
        self.resume_index = 0
        self.progress: Callable[[], int] | None = None  # indices of finished steps this epoch

    def state_dict(self) -> dict:
        if self.progress is None:
            return {}
        return {"epoch": int(self.epoch), "index": int(self.progress())}

    def load_state_dict(self, state: dict) -> None:
        if state:
            # Lightning builds (and prefetches from) a resumed run's iterator before it
            # calls set_epoch, and does not build it again for the restarted epoch
            self.set_epoch(state["epoch"])
            self.resume_at(state["epoch"], state["index"])

    def resume_at(self, epoch: int, index: int) -> None:
        """The next iterator of `epoch` skips this rank's first `index` indices (already trained
        on).
        Kept, not cleared on first use: Lightning builds a resumed run's iterator twice."""
        self.resume_epoch, self.resume_index = int(epoch), int(index)

    def order(self) -> list[int]:
        """This rank's indices for the current epoch, the trained-on head removed on resume."""
        order = list(super().__iter__())
        if self.resume_epoch == self.epoch:
            order = order[self.resume_index :]
        return order

    def __iter__(self):
        return iter(self.order())


class ResumableDataLoader(DataLoader):
    """A DataLoader over a ResumableSampler whose position goes into the checkpoint."""

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


__all__ = ["ResumableDataLoader", "ResumableSampler"]
