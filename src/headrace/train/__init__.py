"""``headrace train``: the main job — stream data into a small GPT and train it (see :mod:`headrace.train.job`)."""

from headrace.train.job import TrainOptions, corpus_files, run

__all__ = ["TrainOptions", "corpus_files", "run"]
