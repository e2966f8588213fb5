"""The training processes' ranks as the data side sees them: which rank this is, and a check that
every rank prepared the same data (each prepares it itself under DDP; towers.distributed says
how the ranks train together)."""

from __future__ import annotations

import hashlib

import numpy as np
import torch.distributed as dist


class RanksDifferError(RuntimeError):
    """Something every rank must hold alike differs between ranks: `what` names it, `digests`
    are each rank's fingerprint of it."""

    def __init__(self, what: str, digests: list[str]):
        self.what, self.digests = what, digests
        super().__init__(
            f"{what} differs between the training processes (fingerprint per rank: {digests}): "
            "every rank prepares the data itself and must get the same arrays; check that the "
            "ranks read the same files and run the same code"
        )


def world() -> tuple[int, int]:
    """(rank, number of ranks) of the default process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def fingerprint(arrays: list[np.ndarray]) -> str:
    """A digest of the arrays' shapes, dtypes and bytes."""
    digest = hashlib.blake2b(digest_size=16)
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.data)
    return digest.hexdigest()


def check_same_on_every_rank(what: str, arrays: list[np.ndarray]) -> None:
    """Raise `RanksDifferError` unless every rank's `arrays` are byte for byte the same."""
    if world()[1] == 1:
        return
    digests: list[str | None] = [None] * world()[1]
    dist.all_gather_object(digests, fingerprint(arrays))
    if len(set(digests)) > 1:
        raise RanksDifferError(what, [str(d) for d in digests])
