"""The data sets a worker keeps on its device between jobs."""

from __future__ import annotations

from collections import OrderedDict

import torch

from service.platform.config import Settings
from service.training.tensors import MnistTensors, load_tensors

PERMUTED_CACHE_SIZE = 2  # permuted copies kept per worker (the base data set is always kept)


class DataCache:
    """Data sets stay on the worker's device between jobs; permuted copies are made once per seed."""

    def __init__(self, settings: Settings, device: torch.device) -> None:
        self.settings, self.device = settings, device
        self._base: dict[str, MnistTensors] = {}
        self._permuted: OrderedDict[tuple[str, int], MnistTensors] = OrderedDict()

    def get(self, dataset: str, permutation_seed: int | None) -> MnistTensors:
        if dataset not in self._base:
            self._base[dataset] = load_tensors(self.settings, dataset).to(self.device)
        if permutation_seed is None:
            return self._base[dataset]
        key = (dataset, permutation_seed)
        if key not in self._permuted:
            self._permuted[key] = self._base[dataset].permuted_by(permutation_seed)
            while len(self._permuted) > PERMUTED_CACHE_SIZE:
                self._permuted.popitem(last=False)
        self._permuted.move_to_end(key)
        return self._permuted[key]
