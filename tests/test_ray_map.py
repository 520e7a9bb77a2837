"""``Executor.map`` with a reservation (issue 13/15): the rewrite step hands its shard tasks to
``map`` with the stage's resources, so on Ray a vLLM rewrite reserves a GPU per task, and a cluster
that has none says so instead of queueing forever. A real private Ray instance, no GPU."""
from __future__ import annotations

import operator

import pytest

pytest.importorskip("ray")


def test_map_places_by_resources_and_refuses_what_the_cluster_lacks():
    from engines.executor import LocalExecutor
    from engines.ray_executor import RayExecutor
    from engines.stage import Resources
    from schemas.config import ExecutorConfig

    items = list(range(12))
    with LocalExecutor(ExecutorConfig(workers=2), show_progress=False) as local:
        expected = sorted(local.map(operator.neg, items, resources=Resources(cpus=1)))
    with RayExecutor(ExecutorConfig(kind="ray", workers=2), show_progress=False) as ray_ex:
        assert sorted(ray_ex.map(operator.neg, items, resources=Resources(cpus=1))) == expected == [-i for i in
                                                                                                 reversed(items)]
        with pytest.raises(RuntimeError, match="GPU"):
            list(ray_ex.map(operator.neg, items, resources=Resources(cpus=1, gpus=1)))
