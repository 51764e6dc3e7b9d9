"""Where work runs on a Ray cluster: bookkeeping actors on the driver's node, a sweep's
clips held there, pools of model-holding actors, and the local cluster's dashboard port."""

from __future__ import annotations

import socket

import ray
import ray.data
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy


def on_driver_node(actor_class):
    """``actor_class`` scheduled on the driver's node: a job's bookkeeping actors (skip log,
    epoch clock) then live exactly as long as the job, and losing a worker node loses neither
    the skip counts nor the epoch (a num_cpus=0 actor may otherwise land on any node)."""
    return actor_class.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    )


def materialize_on_driver_node(dataset: ray.data.Dataset) -> ray.data.MaterializedDataset:
    """``dataset`` computed into the object store, every block held by the driver's node.

    ``materialize()`` leaves each block on the node whose task made it. When that node is
    lost, Ray rebuilds the block by running the task again, which must wait for a free CPU.
    A sweep's trials hold their CPUs (in placement groups) until they end, so a trial that
    needs a lost block waits for a CPU that only it could free: the sweep hangs. A block the
    driver put is lost only with the driver's node, and that ends the job anyway.

    Cost: the driver's node holds the whole dataset (its object store spills to disk beyond
    memory), and each block that another node holds is copied once through the driver.
    """
    here = ray.get_runtime_context().get_node_id()
    refs = dataset.materialize().to_arrow_refs()
    locations = ray.experimental.get_object_locations(refs)
    pinned = []
    for ref in refs:
        where = locations.get(ref)  # None: the lookup failed
        # Blocks under 100 KB have no node: they live in the driver's own memory.
        held_here = where is not None and not where["did_spill"] and all(node == here for node in where["node_ids"])
        pinned.append(ref if held_here else ray.put(ray.get(ref)))
    return ray.data.from_arrow_refs(pinned)


def inference_pool(actors: int | None = None) -> dict:
    """``map_batches`` arguments for a pool of model-holding actors: ``actors`` of them, else
    one per GPU, else a quarter of the CPUs (decoding the clips needs the rest)."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    size = actors or (gpus if gpus else max(1, int(resources.get("CPU", 1)) // 4))
    return {"compute": ray.data.ActorPoolStrategy(size=size), "num_gpus": 1 if gpus else 0, "num_cpus": 1}


# Ray's own default; a local cluster asks for it explicitly (see local_dashboard_port).
DASHBOARD_PORT = 8265


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, chosen by the OS."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_dashboard_port() -> int:
    """The dashboard port for a local cluster: Ray's usual 8265, or a free one while another
    Ray on this machine holds it. Ray gives up at once on a port it was given, and it is
    always given one ("Failed to find a valid port for dashboard after 0 retries"), so a
    second workflow run on one machine would not start."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", DASHBOARD_PORT))
        except OSError:
            return free_port()
    return DASHBOARD_PORT
