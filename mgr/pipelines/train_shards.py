"""How a training run's datasets are split among its Ray Train workers.

Apart from :mod:`mgr.pipelines.train_data` because it subclasses ``ray.train.DataConfig``:
the ingest tasks import that module in every worker process they start, and must not pay
for importing Ray Train (nor torch) there.
"""

from __future__ import annotations

from typing import Sequence

import ray.train

__all__ = ["ExactDataConfig"]


class ExactDataConfig(ray.train.DataConfig):
    """Split ``equal`` datasets in equal shards (DDP steps stay in lockstep) and ``exact``
    ones without dropping a row (every val row scored exactly once).

    Ray's default split is ``equal=True`` for every split dataset, which drops remainder rows.
    """

    def __init__(self, *, equal: Sequence[str], exact: Sequence[str]):
        super().__init__(datasets_to_split=list(equal) + list(exact))
        self._equal, self._exact = tuple(equal), tuple(exact)

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        output = [{} for _ in range(world_size)]
        hints = worker_node_ids if self._enable_shard_locality else None
        for name, ds in datasets.items():
            if ds.name is None:
                ds.set_name(name)
            ds = ds.copy(ds)
            ds.context.execution_options = self._resolve_execution_options(name)
            if name in self._equal or name in self._exact:
                parts = ds.streaming_split(world_size, equal=name in self._equal, locality_hints=hints)
                for i, part in enumerate(parts):
                    output[i][name] = part
            else:
                for i in range(world_size):
                    output[i][name] = ds.iterator()
        return output
