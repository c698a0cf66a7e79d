"""The built-in text corpus: the Python standard library's own files, one byte per token (vocabulary 256).

Real text with no download: every interpreter ships it.  ``.py`` and ``.txt`` files under
``sysconfig.get_paths()["stdlib"]`` (``site-packages`` excluded; ~1.9k files, ~32 MB on CPython 3.12).  The split is
by file and deterministic: a file goes to validation when the first 8 hex digits of sha1(its path relative to the
root) / 2**32 fall below ``val_fraction``, independent of the file system's listing order.  Files are concatenated in
sorted order with a 0 byte between them.  Batches are windows of ``seq_len + 1`` bytes at uniformly drawn offsets:
``x`` = the first ``seq_len`` bytes, the labels ``y`` = the next byte at every position.

    >>> corpus = stdlib_corpus()
    >>> train = corpus.batches("train", batch_size=16, seq_len=128, seed=0)       # endless, deterministic
    >>> val = corpus.fixed_batches("val", n=8, batch_size=16, seq_len=128, seed=12345)
"""
from __future__ import annotations

import functools
import hashlib
import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import torch

from .batch import Batch

__all__ = ["ByteCorpus", "stdlib_corpus", "VOCAB_SIZE", "Split"]

VOCAB_SIZE = 256
Split = Literal["train", "val"]
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}


class ByteCorpus:
    """Text files under ``root`` as bytes, split into train/validation by file (see the module docstring)."""

    def __init__(self, root: str | os.PathLike | None = None, val_fraction: float = 0.1,
                 exts: tuple[str, ...] = (".py", ".txt")):
        self.root = Path(root or sysconfig.get_paths()["stdlib"])
        self.val_fraction = val_fraction
        parts: dict[str, list[bytes]] = {"train": [], "val": []}
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
            for fn in sorted(filenames):
                if not fn.endswith(exts):
                    continue
                path = Path(dirpath) / fn
                try:
                    data = path.read_bytes()
                except OSError:
                    continue
                if data:
                    parts[self.split_of(path.relative_to(self.root).as_posix())].append(data)
        if not parts["train"] or not parts["val"]:
            raise RuntimeError(f"no {'/'.join(exts)} files found under {self.root} (a zipped standard library?); "
                               "pass root= a directory of text files, or give your own batches")
        self.n_files = {k: len(v) for k, v in parts.items()}
        self.data = {k: torch.frombuffer(bytearray(b"\0".join(v)), dtype=torch.uint8) for k, v in parts.items()}

    def split_of(self, relative_path: str) -> Split:
        """The split a file belongs to, from its path relative to the root."""
        h = int(hashlib.sha1(relative_path.encode()).hexdigest()[:8], 16) / 2**32
        return "val" if h < self.val_fraction else "train"

    def describe(self) -> dict:
        """Root, file and byte counts per split, and a fingerprint of the validation bytes."""
        return {
            "root": str(self.root),
            "files": dict(self.n_files),
            "bytes": {k: int(v.numel()) for k, v in self.data.items()},
            "val_sha1": hashlib.sha1(self.data["val"].numpy().tobytes()).hexdigest()[:16],
        }

    def batch(self, split: Split, generator: torch.Generator, batch_size: int, seq_len: int,
              vocab_size: int = VOCAB_SIZE) -> Batch:
        """One batch ``Batch(args=(x,), labels=y)`` of ``batch_size`` windows drawn with ``generator``; token ids are
        bytes, taken modulo ``vocab_size`` for a model with fewer than 256 tokens."""
        data = self.data[split]
        starts = torch.randint(0, data.numel() - seq_len - 1, (batch_size,), generator=generator)
        chunk = data[starts[:, None] + torch.arange(seq_len + 1)[None, :]].long()
        if vocab_size < VOCAB_SIZE:
            chunk = chunk % vocab_size
        return Batch(args=(chunk[:, :-1],), labels=chunk[:, 1:])

    def batches(self, split: Split, batch_size: int, seq_len: int, seed: int = 0,
                vocab_size: int = VOCAB_SIZE) -> Iterator[Batch]:
        """An endless stream of batches; the same ``seed`` gives the same stream."""
        generator = torch.Generator().manual_seed(seed)
        while True:
            yield self.batch(split, generator, batch_size, seq_len, vocab_size)

    def fixed_batches(self, split: Split, n: int, batch_size: int, seq_len: int, seed: int = 0,
                      vocab_size: int = VOCAB_SIZE) -> list[Batch]:
        """The first ``n`` batches of :meth:`batches` (e.g. a fixed validation set)."""
        stream = self.batches(split, batch_size, seq_len, seed, vocab_size)
        return [next(stream) for _ in range(n)]


@functools.lru_cache(maxsize=2)
def stdlib_corpus(val_fraction: float = 0.1) -> ByteCorpus:
    """The standard library corpus of this interpreter, read once per process."""
    return ByteCorpus(val_fraction=val_fraction)
