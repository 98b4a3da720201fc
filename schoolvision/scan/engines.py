"""Where a scan's scene units run: in this process (``local``) or on Ray actors (``ray``).

Both engines run the same unit (:class:`~schoolvision.scan.unit.SceneWorker`) and so write the
same per-scene files; the driver (:func:`schoolvision.scan.runner.run_scan`) skips finished
scenes, hands the rest to an engine and merges the outcomes.

``ray``: one actor per GPU (or per ``cpus_per_worker`` CPUs without GPUs) holds the model, built
once; scenes are pulled dynamically (an idle actor takes the next scene, so a big scene does not
hold up the others), and an actor that dies is restarted (``max_restarts``) and its scene retried
(``max_task_retries``); a unit's files appear atomically and a retry of a finished scene returns
its done-record, so every scene is written once. Without ``address`` a local Ray instance is
started for the scan and shut down after it; ``address="auto"`` or ``HOST:PORT`` joins a running
cluster (``ray start --head``, ``ray up``, KubeRay), whose nodes must see the same paths.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import deque
from collections.abc import Iterator, Sequence

from tqdm.auto import tqdm

from schoolvision.errors import UserError
from schoolvision.scan.unit import NOVELTY_FROM_RUN, SceneOutcome, SceneWorker, UnitSettings

ENGINES = ("local", "ray")

MAX_RESTARTS = 3
"""Times a dead Ray actor is restarted (its model rebuilt) before its scenes count as failed."""

MAX_TASK_RETRIES = 3
"""Times a scene whose actor died is retried."""

RAY_MISSING = "--engine ray needs Ray: pip install schoolvision[ray]"


def import_ray():
    """The ``ray`` module, or one :class:`UserError` naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise UserError(RAY_MISSING) from None
    return ray


class LocalEngine:
    """Scene units one after another in this process, with one model (what ``scan`` always did).

    Args:
        settings: what every scene shares.
        model: a classifier to use instead of the run's checkpoint (with ``meta``).
        meta: its ``CheckpointMeta``.
        from_run: ``model`` was loaded from the run (its ONNX graph is cached beside the checkpoint).
        progress: a bar over the scenes (from two on) and over each scene's windows.
    """

    name = "local"

    def __init__(self, settings: UnitSettings, model=None, meta=None, from_run: bool = False,
                 progress: bool = True):
        self.progress = progress
        self.worker = SceneWorker(settings, model, meta, from_run=from_run, progress=progress)

    def describe(self) -> tuple[str, str]:
        """(runtime name, its description)."""
        return self.worker.describe()

    def map(self, sources: Sequence) -> Iterator[SceneOutcome]:
        """The outcome of each scene, in order."""
        for source in tqdm(sources, unit="scene", desc="scan", disable=not self.progress or len(sources) < 2):
            yield self.worker.run(source)

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> LocalEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RayEngine:
    """Scene units on Ray actors, scenes pulled dynamically; see the module docstring.

    Args:
        settings: what every scene shares (paths are resolved in the driver's working directory).
        model: a classifier to send to the actors instead of loading the run's checkpoint (with ``meta``).
        meta: its ``CheckpointMeta``.
        address: a running cluster (``auto`` or ``HOST:PORT``); None starts a local instance (or uses
            the one this process already started, e.g. in a notebook or a test).
        cpus_per_worker: CPUs (and torch threads) of each actor.
        workers: at most this many actors (None: as many as the cluster's GPUs or CPUs allow).
        progress: a bar over the scenes on the driver, and Ray's own messages (else only its errors).

    Raises:
        UserError: Ray is not installed, or the cluster cannot be reached.
    """

    name = "ray"

    def __init__(self, settings: UnitSettings, model=None, meta=None, address: str | None = None,
                 cpus_per_worker: int = 1, workers: int | None = None, progress: bool = True):
        self.ray = ray = import_ray()
        self.settings, self.progress = settings, progress
        self.cpus_per_worker, self.max_workers = max(1, int(cpus_per_worker)), workers
        self.started = False
        if not ray.is_initialized():
            try:
                quiet = {} if progress else {"log_to_driver": False, "logging_level": logging.ERROR}
                if address:
                    ray.init(address=address, **quiet)
                else:
                    # Ray starts workers at niceness 15: on a shared machine they would yield to everything else
                    ray.init(num_cpus=os.cpu_count(), include_dashboard=False,
                             _system_config={"worker_niceness": 0}, **quiet)
                    self.started = True
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise UserError(f"--ray-address {address}: {str(exc).splitlines()[0]}") from None
        self.model = None if model is None else ray.put(model.cpu())  # sent once, resolved by each actor
        self.meta = meta
        self.actors: list = []

    def _start(self, n_scenes: int) -> None:
        ray, resources = self.ray, self.ray.cluster_resources()
        gpus = int(resources.get("GPU", 0)) if self.settings.options.device != "cpu" else 0
        if gpus:
            count, options = gpus, {"num_gpus": 1, "num_cpus": self.cpus_per_worker}
        else:
            count = max(1, int(resources.get("CPU", 1) // self.cpus_per_worker))
            options = {"num_cpus": self.cpus_per_worker}
        count = max(1, min(count, n_scenes, self.max_workers or count))
        actor = ray.remote(SceneWorker).options(max_restarts=MAX_RESTARTS, max_task_retries=MAX_TASK_RETRIES,
                                                **options)
        settings = self.settings  # the novelty summary is megabytes of arrays: each actor reads it from the run
        if settings.novelty is not None:
            settings = dataclasses.replace(settings, novelty=NOVELTY_FROM_RUN)
        self.actors = [actor.remote(settings, self.model, self.meta, threads=self.cpus_per_worker,
                                    workdir=os.getcwd())
                       for _ in range(count)]

    def describe(self) -> tuple[str, str]:
        """(runtime name, its description) of the actors' runtime."""
        if not self.actors:
            self._start(1)
        return tuple(self.ray.get(self.actors[0].describe.remote()))

    def map(self, sources: Sequence) -> Iterator[SceneOutcome]:
        """The outcome of each scene as it finishes (in any order); a bar over the scenes."""
        ray = self.ray
        if not sources:
            return
        if not self.actors:
            self._start(len(sources))
        queue, idle, pending = deque(sources), list(self.actors), {}
        with tqdm(total=len(sources), unit="scene", desc="scan (ray)", disable=not self.progress) as bar:
            while queue or pending:
                while idle and queue:
                    actor, source = idle.pop(), queue.popleft()
                    pending[actor.run.remote(source)] = (actor, source)
                ready, _ = ray.wait(list(pending), num_returns=1)
                actor, source = pending.pop(ready[0])
                try:
                    outcome = ray.get(ready[0])
                    idle.append(actor)
                except ray.exceptions.RayActorError as exc:  # restarts used up: this actor takes no more scenes
                    outcome = SceneOutcome(source.name, "failed", error=f"Ray worker died ({type(exc).__name__})")
                    if not idle and not pending:
                        for rest in queue:
                            yield SceneOutcome(rest.name, "failed", error="no Ray worker left")
                        queue.clear()
                bar.update()
                yield outcome

    def close(self) -> None:
        """Stop the actors; shut down the Ray instance this engine started."""
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
        if self.started:
            self.ray.shutdown()
            self.started = False

    def __enter__(self) -> RayEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_engine(name: str, settings: UnitSettings, model=None, meta=None, *, from_run: bool = False,
                address: str | None = None, cpus_per_worker: int = 1,
                progress: bool = True) -> LocalEngine | RayEngine:
    """The engine called ``name`` (``local`` or ``ray``), ready to map scenes (see the engines' Args).

    Raises:
        UserError: an unknown engine, or ``ray`` without Ray installed.
    """
    if name == "local":
        return LocalEngine(settings, model, meta, from_run=from_run, progress=progress)
    if name == "ray":
        return RayEngine(settings, model, meta, address=address, cpus_per_worker=cpus_per_worker,
                         progress=progress)
    raise UserError(f"unknown --engine {name!r}; choose one of {', '.join(ENGINES)}")
