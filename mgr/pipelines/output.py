"""One dataset-output protocol for the catalog jobs (``mgr extract`` and ``mgr label``).

Modelled on Ray Data's ``Datasink`` lifecycle, with the steps a Datasink runs too late
for moved before the pipeline starts::

    open()      lock OUTPUT, remove temporary files of a crashed run, (--overwrite: clear it)
    plan()      the work as hash-partitioned Arrow blocks, minus what OUTPUT already holds
                (OUTPUT's ``uri`` column read once, in parallel: a distributed anti-join)
    write()     run the job's pipeline over the plan; its last stage writes part files
                (:mod:`mgr.io.parts`) and yields one small totals row per block, which feed
                the progress line and the summary; a node lost mid-run re-plans what is left
    complete()  the exactly-once check: one distributed aggregate of OUTPUT against the work
    failed      one failure path (:class:`~mgr.errors.JobError` naming the worker's real cause)

Nothing per file reaches the driver: the work, OUTPUT's keys and the anti-join live in the
object store, owned by a planner actor (``num_cpus=0``) that lives for one job; the driver
holds object references per partition and small per-block totals.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import pyarrow as pa

from mgr.errors import JobError, user_error, worker_cause
from mgr.io.location import Location
from mgr.io.parts import TMP_PREFIX
from mgr.pipelines.catalog import PartSummary, merge_summary

__all__ = ["Listing", "Labelled", "Manifest", "Tables", "Plan", "DatasetOutput", "totals_row", "no_restarts", "map_batches",
           "alive_cpus", "MAX_REPLANS"]

#: how many times a run re-plans after losing a node before it gives up
MAX_REPLANS = 3

#: CPUs of a planning task (listing, manifest and OUTPUT reads, the anti-join)
PLAN_CPUS = 0.25


@dataclass(frozen=True)
class Listing:
    """Work: the audio files below ``location``; ``rows(uris, sizes) -> pa.Table`` makes the rows."""

    location: Location
    rows: Callable


@dataclass(frozen=True)
class Labelled:
    """Work: the audio files below ``location`` joined with a label file by key, in tasks.

    ``join`` is a :class:`~mgr.datasets.sources.LabelJoin`; ``rows(records) -> pa.Table``
    turns one key partition's records into work rows (``uri`` first). The plan's
    ``work_summary`` gains ``listed`` (files found under ``location``) and ``matched``
    (files the label file knows).
    """

    location: Location
    join: Any
    rows: Callable


@dataclass(frozen=True)
class Manifest:
    """Work: the rows of a manifest file, or of every ``.csv``/``.parquet`` below a folder."""

    location: Location


@dataclass(frozen=True)
class Tables:
    """Work already in the object store (refs to Arrow tables with a ``uri`` column)."""

    refs: list


@dataclass
class Plan:
    """What a run has to do: per-partition refs of the work left, and small aggregates."""

    todo_refs: list
    todo: int
    work: int
    done: int
    retry: int
    output: dict[str, Any] = field(default_factory=dict)  # rows, errors, model_ids, columns, genres
    work_columns: list[str] = field(default_factory=list)
    work_summary: dict[str, Any] = field(default_factory=dict)


def totals_row(totals: dict) -> pa.Table:
    """The one-row table a pipeline's last stage yields per block (its totals as JSON)."""
    return pa.table({"totals": [json.dumps(totals, default=_jsonable)]})


def no_restarts() -> dict:
    """Remote args of a pipeline's actors: never restarted (passed to ``map_batches``).

    Ray Data restarts actors forever by default; an actor whose node is gone then waits
    for a node that never comes. Without restarts the run fails fast and
    :meth:`DatasetOutput.write` re-plans what is left on the nodes that remain.
    """
    return {"max_restarts": 0, "max_task_retries": 0}


def map_batches(ds, fn, **kwargs):
    """``ds.map_batches(fn, **kwargs)``; Ray 2.60 has no named parameter for ``max_restarts``
    and warns that extra remote args are deprecated: that warning is not the user's business."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return ds.map_batches(fn, **kwargs)


def _jsonable(value):
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(type(value).__name__)


_LOST = ("ActorDiedError", "ActorUnavailableError", "NodeDiedError", "WorkerCrashedError", "ObjectLostError",
         "OwnerDiedError", "ObjectReconstructionFailedError", "RayActorError", "LocalRayletDiedError")


def lost_node(exc: BaseException) -> bool:
    """True when ``exc`` (or what it wraps) says a worker, actor or node went away."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if any(t.__name__ in _LOST for t in type(exc).__mro__):
            return True
        inner = getattr(exc, "cause", None)
        exc = inner if isinstance(inner, BaseException) else (exc.__cause__ or exc.__context__)
    return False


def _raise_user_error(exc: BaseException):
    """Re-raise the MgrError a planning task or actor raised (:func:`~mgr.errors.user_error`),
    else a JobError naming the cause."""
    error = user_error(exc)
    if error is not None:
        raise error.with_traceback(None) from None
    raise JobError(f"planning failed: {worker_cause(exc)}") from None


class DatasetOutput:
    """The lifecycle of one OUTPUT dataset written by one run (see the module docstring).

    Parameters
    ----------
    location : Location
        OUTPUT folder or ``s3://`` prefix.
    command : str
        Who holds the lock (``"mgr label"``).
    marker : str
        Completion marker file name (``_SUCCESS.json``, ``_features.json``).
    read_columns : tuple of str
        OUTPUT columns read for resume (``uri`` first; ``error``/``model_id`` when present).
    remove_unreadable : bool
        Remove part files that are not readable Parquet (their rows are redone) instead of
        refusing OUTPUT.
    summarize : PartSummary, optional
        What :meth:`complete` also computes from every part's ``check_columns`` in its one
        pass (:class:`~mgr.pipelines.catalog.PartSummary`); its ``summary``.
    """

    def __init__(self, location: Location, *, command: str, marker: str, read_columns=("uri", "error"),
                 check_columns=("uri", "error"), remove_unreadable: bool = False,
                 summarize: PartSummary | None = None) -> None:
        self.location, self.command, self.marker = location, command, location.join(marker)
        self.read_columns, self.check_columns = tuple(read_columns), tuple(check_columns)
        self.remove_unreadable, self.summarize = remove_unreadable, summarize
        self._planner = None

    # ------------------------------------------------------------------ lifecycle
    @contextlib.contextmanager
    def open(self) -> Iterator["DatasetOutput"]:
        """Hold the lock and a planner actor; temporary files of a crashed run are removed."""
        import ray

        from mgr.pipelines.planner import Planner

        with self.location.lock(command=self.command):
            # Pinned (not merely preferred) to the driver's node: the planner must outlive any
            # other node, and a soft preference was seen spilling it to a worker that then died.
            node = ray.get_runtime_context().get_node_id()
            strategy = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(node_id=node, soft=False)
            self._planner = Planner.options(num_cpus=0, scheduling_strategy=strategy).remote(
                self.location, read_columns=self.read_columns, check_columns=self.check_columns,
                remove_unreadable=self.remove_unreadable, summarize=self.summarize,
                cpus=max(1, int(ray.cluster_resources().get("CPU", 1))))
            try:
                self._call("clean")
                yield self
            finally:
                ray.kill(self._planner)
                self._planner = None

    def _call(self, method: str, *args, **kwargs):
        import ray

        try:
            return ray.get(getattr(self._planner, method).remote(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - a task or actor error: name its cause
            _raise_user_error(exc)

    def read_marker(self) -> dict | None:
        """The completion marker of a previous run, or None."""
        return self.marker.read_json() if self.marker.exists() else None

    def drop_marker(self) -> None:
        """OUTPUT is about to change: the old marker no longer describes it."""
        self.marker.rm()

    def write_marker(self, content: dict) -> None:
        self.marker.write_json(content)

    def plan(self, work, *, retry_errors: bool = False, ignore_output: bool = False) -> Plan:
        """The work minus what OUTPUT holds (``ignore_output``: all of it; ``--overwrite``)."""
        return Plan(**self._call("plan", work, retry_errors=retry_errors, ignore_output=ignore_output))

    def clear(self) -> int:
        """Remove every part file and the marker (``--overwrite``); returns the parts removed."""
        return self._call("clear", self.marker.name)

    def drop_retried(self) -> int:
        """Rewrite the parts holding rows to retry without them (``--retry-errors``)."""
        return self._call("drop_retried")

    def complete(self) -> dict[str, Any]:
        """The exactly-once check of OUTPUT against the planned work (one distributed aggregate).

        Returns ``rows``, ``distinct``, ``duplicates``, ``missing`` (work keys not in OUTPUT),
        ``errors`` and ``summary`` (the folded ``summarize`` of every part, or None).
        """
        return self._call("check")

    # ------------------------------------------------------------------ writing
    def write(self, plan: Plan, work, make_dataset: Callable[[Plan], Any], *, on_totals: Callable[[dict], None],
              what: str, retry_errors: bool = False) -> dict[str, Any]:
        """Run ``make_dataset(plan)`` (a Ray dataset whose rows are :func:`totals_row`) to the end.

        A run that loses a worker, actor or node re-plans what OUTPUT still lacks and goes on
        with the nodes that remain (at most :data:`MAX_REPLANS` times). Any other failure is
        one :class:`JobError` naming the worker's cause.
        """
        totals: dict[str, Any] = {}
        for attempt in range(MAX_REPLANS + 1):
            ds = make_dataset(plan)
            replan = False
            try:
                for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                    for text in batch.column("totals").to_pylist():
                        block = json.loads(text)
                        merge_summary(totals, block)
                        on_totals(block)
                return totals
            except Exception as exc:  # noqa: BLE001 - a storage, model or cluster failure, not a file's
                replan = lost_node(exc) and attempt < MAX_REPLANS
                message = f"{what}: {worker_cause(exc)}; re-run the command to resume"
            # The failed dataset's actors keep their CPUs until it is collected (the exception
            # chain would hold it): free them now, then re-plan or fail.
            del ds
            gc.collect()
            if not replan:
                raise JobError(message)
            time.sleep(2.0)  # let the dead pipeline's last writers finish or die
            self._call("clean")
            plan = self.plan(work, retry_errors=False)
            if plan.todo == 0:
                return totals
        raise JobError(f"{what}: nodes kept failing; re-run the command to resume")


def alive_cpus() -> int:
    """CPUs of the nodes alive now (a lost node's are gone, whatever the totals still say)."""
    import ray

    return max(1, int(sum(n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive"))))


def n_partitions(n_groups: int) -> int:
    """Hash partitions of a plan: one per map group, at most 64."""
    return max(1, min(64, math.ceil(n_groups)))


def is_part_name(name: str) -> bool:
    return name.endswith(".parquet") and not name.startswith(("_", "."))


def is_tmp_name(name: str) -> bool:
    return name.startswith(TMP_PREFIX)
