"""``headrace train``: the main job — stream data into a small GPT and train it (see :mod:`headrace.train.job`)."""

import os

# Intel MKL (torch's CPU BLAS here) picks its kernels by the memory alignment of the operands, and its thread
# count by the machine's load, unless asked for reproducible results: a run resumed from a checkpoint could then
# differ from the uninterrupted one in the last bits of a loss. Strict CNR makes matrix products bitwise the same
# whatever the threads and alignment. Set before torch is imported, where the user has not chosen a mode.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
os.environ.setdefault("MKL_DYNAMIC", "FALSE")

from headrace.train.job import TrainOptions, corpus_files, run  # after MKL_CBWR

__all__ = ["TrainOptions", "corpus_files", "run"]
