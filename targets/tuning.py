"""MetaSchedule tuning for the TVM targets, with a persistent database per target.

The database lives in `<cache>/tuning/<target key>/` (`database_workload.json`,
`database_tuning_record.json`), where the cache is $EDGEC_CACHE, else $XDG_CACHE_HOME/edgec,
else ~/.cache/edgec, and the key names the triple, CPU, attributes and cores: records are
matched by workload inside one target's folder. Every compile applies the records it finds;
`--tune TRIALS` / `--tune-time SECONDS` tunes only the tasks (fused kernels) with no record yet,
so a second compile of the same model tunes nothing and takes seconds.

arm64 cannot be measured here. With `--device HOST:PORT` the candidates are cross-compiled and
timed on that device over RPC (records under the arm64 key); without one, the records tuned
for this host are applied where the workloads match, and the manifest says where they were
measured. Timings under qemu emulation are labelled: they are no guide to a real device.

Measured on these machines (shared BACKENDS.md): MetaSchedule's default builder imports
`tvm.s_tir.tensor_intrin` in every fresh worker (~25 s) and kills builds after 30 s, so every
trial fails silently; edgec's builder skips that import and waits longer, and a tuning run
that measured no candidate is an error, not an untuned bundle passed off as tuned. The budget
is split so that every task gets trials (tasks x per-task cap <= total).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgec.cache import cache_dir
from edgec.core.errors import EdgecError, OptionError
from edgec.targets.base import CompileOptions
from edgec.targets.tvm_import import binding_owners, kernel_sources, last_source
from edgec.targets.tvm_targets import host_target

log = logging.getLogger("edgec.tuning")

DEFAULT_TRIALS_PER_TASK = 64
RECORDS = "database_tuning_record.json"  # the cap --tune-time uses when no trial count is given


class TuningError(EdgecError):
    """Tuning ran but measured nothing: a broken toolchain or runner, exit code 1."""

    exit_code = 1


def target_key(target: dict[str, Any]) -> str:
    """triple-cpu-Nc-hash: a readable folder name that differs for every different target."""
    digest = hashlib.sha256(json.dumps(target, sort_keys=True).encode()).hexdigest()[:8]
    return f"{target['mtriple']}-{target['mcpu']}-{target['num-cores']}c-{digest}"


def database_dir(target: dict[str, Any]) -> Path:
    return cache_dir() / "tuning" / target_key(target)


def _build_without_tensor_intrin(mod: Any, target: Any, _params: Any) -> Any:
    """MetaSchedule's default build minus the tensor-intrinsic import (~25 s per worker)."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def _export_aarch64(mod: Any) -> str:
    """A candidate as an aarch64 shared library, which the device can load without a compiler."""
    import tempfile

    from tvm.support import cc

    path = os.path.join(tempfile.mkdtemp(), "tvm_tmp_mod.so")
    mod.export_library(path, fcompile=cc.cross_compiler("aarch64-linux-gnu-gcc"))
    return path


def _direct_session(rpc_config: Any) -> Any:
    """An RPC session straight to the device (edgec's device server needs no tracker)."""
    from tvm import rpc

    return rpc.connect(
        rpc_config.tracker_host,
        rpc_config.tracker_port,
        session_timeout=rpc_config.session_timeout_sec,
    )


def _device_tools(device: str) -> tuple[Any, Any, str]:
    """Builder, runner and a description for measuring candidates on an RPC device."""
    from tvm.s_tir import meta_schedule as ms

    from edgec.runtime.remote import connect, parse_device

    with connect(device) as remote:
        where = remote.info.describe()
        if remote.info.machine != "aarch64":
            raise OptionError(f"--device {device} is {remote.info.machine}, not an arm64 device")
    host, port = parse_device(device)
    builder = ms.builder.LocalBuilder(
        f_build=_build_without_tensor_intrin, f_export=_export_aarch64, timeout_sec=300.0
    )
    runner = ms.runner.RPCRunner(
        rpc_config=ms.runner.RPCConfig(
            tracker_host=host, tracker_port=port, tracker_key="direct", session_timeout_sec=300
        ),
        evaluator_config=ms.runner.EvaluatorConfig(
            number=3, repeat=1, min_repeat_ms=0, enable_cpu_cache_flush=False
        ),
        f_create_session=_direct_session,
        max_workers=1,  # the device server takes one session at a time
    )
    return builder, runner, where


def _round_robin(deadline: float | None, stopped: list[bool]) -> Any:
    """MetaSchedule's round-robin order (every task gets a batch in turn), ending at `deadline`.

    MetaSchedule has no time budget, and terminating tasks from a measure callback trips its
    own checks. Candidates are measured asynchronously and reach the database when their task
    is joined, so this scheduler joins a task before handing it out again and, past the
    deadline, returns -1: the scheduler then joins what is still running and stops.
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.task_scheduler import PyTaskScheduler

    @derived_object
    class DeadlineRoundRobin(PyTaskScheduler):
        def __init__(self) -> None:
            super().__init__()
            self.last = -1
            self.pending: set[int] = set()

        def next_task_id(self) -> int:
            tasks = self._outer().tasks_  # type: ignore[attr-defined]
            if deadline is not None and time.monotonic() > deadline:
                stopped.append(True)
                return -1
            for _ in range(len(tasks)):
                self.last = (self.last + 1) % len(tasks)
                if tasks[self.last].is_terminated:
                    continue
                if self.last in self.pending:
                    self.join_running_task(self.last)
                    if self._outer().tasks_[self.last].is_terminated:  # type: ignore[attr-defined]
                        continue
                self.pending.add(self.last)
                return self.last
            return -1

    return DeadlineRoundRobin()


@dataclass
class TuneStats:
    """What a tuning run really did, counted from the measured results."""

    trials: int = 0
    ok: int = 0
    build_errors: int = 0
    run_errors: int = 0
    first_error: str = ""
    best_s: dict[str, float] = field(default_factory=dict)


def _progress_callback(
    stats: TuneStats,
    names: list[str],
    total: int,
    report: Callable[[str], None] | None,
) -> Any:
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class Progress(PyMeasureCallback):
        def apply(
            self,
            task_scheduler: Any,
            task_id: int,
            measure_candidates: Any,
            builder_results: Any,
            runner_results: Any,
        ) -> None:
            name = names[task_id]
            for b, r in zip(builder_results, runner_results, strict=True):
                stats.trials += 1
                if b.error_msg is not None:
                    stats.build_errors += 1
                    stats.first_error = stats.first_error or str(b.error_msg)
                elif r.error_msg is not None or not r.run_secs:
                    stats.run_errors += 1
                    stats.first_error = stats.first_error or str(r.error_msg)
                else:
                    stats.ok += 1
                    secs = sum(float(s) for s in r.run_secs) / len(r.run_secs)
                    stats.best_s[name] = min(stats.best_s.get(name, secs), secs)
            if report is not None:
                best = stats.best_s.get(name)
                report(
                    f"tuning: {stats.trials}/{total} trials, {len(stats.best_s)}/{len(names)} "
                    f"tasks measured; {name}: best "
                    + (f"{best * 1e3:.3f} ms" if best is not None else "-")
                )

    return Progress()


def _quiet_metaschedule() -> None:
    """MetaSchedule logs every round to stdout; keep that in its log files unless -vv."""
    ms_log = logging.getLogger("tvm.s_tir.meta_schedule")
    for handler in list(ms_log.handlers):  # it re-adds its own for each run, and cannot
        ms_log.removeHandler(handler)  # re-list unnamed ones (a second run would fail)
        handler.close()
    if not log.isEnabledFor(logging.DEBUG):  # its console handler copies this level
        ms_log.setLevel(logging.WARNING)


def _has_record(db: Any, mod: Any) -> bool:
    """A record in `db`, or no need of one: a kernel that comes scheduled (edgec's fused
    attention, `targets.attention_kernel`) keeps its schedule, tuned or not."""
    funcs = [f for f in mod.functions.values() if getattr(f, "attrs", None) is not None]
    if funcs and all("tir.is_scheduled" in f.attrs for f in funcs):
        return True
    return bool(db.has_workload(mod) and db.get_top_k(db.commit_workload(mod), 1))


def _lower(mod: Any, target: dict[str, Any], kernels: list[dict[str, Any]] | None = None) -> Any:
    """The Relax-to-TIR lowering that tuning and applying records both start from (Relax's
    "zero" pipeline). `kernels`, when given, receives each kernel `main` calls, in call order,
    with the source nodes fused into it (`kernel_sources`), read between fusion and FuseTIR,
    while the fused functions still hold the bindings the importer named."""
    import tvm
    from tvm.relax import transform
    from tvm.s_tir import meta_schedule as ms

    last = last_source(mod) if kernels is not None else None
    with tvm.target.Target(target):
        mod = tvm.transform.Sequential(
            [
                transform.DecomposeOpsForInference(),
                transform.CanonicalizeBindings(),
                transform.LegalizeOps(),
                transform.AnnotateTIROpPattern(),
                transform.FoldConstant(),
            ]
        )(mod)
        owners = binding_owners(mod, last) if kernels is not None else []
        mod = transform.FuseOps()(mod)
        if kernels is not None:
            kernels[:] = kernel_sources(mod, owners)
        mod = transform.FuseTIR()(mod)
        if ms.Database.current():
            mod = transform.MetaScheduleApplyDatabase()(mod)
        return mod


def untuned_tasks(mod: Any, target: dict[str, Any]) -> list[str] | None:
    """The tasks of `mod` that the host's database has no record for (None: no database at
    all, so every task would run TVM's default schedule)."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    work_dir = database_dir(target)
    if not (work_dir / RECORDS).is_file():
        return None
    tasks = ms.relax_integration.extract_tasks(_lower(mod, target), tvm.target.Target(target))
    db = ms.database.JSONDatabase(work_dir=str(work_dir))
    return [t.task_name for t in tasks if not _has_record(db, t.dispatched[0])]


def schedule(
    mod: Any,
    target: dict[str, Any],
    options: CompileOptions,
    cross: bool,
    kernels: list[dict[str, Any]] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Lower `mod`, tune the tasks the database lacks (if asked), apply the database
    (`kernels`: filled as `_lower` says).

    Returns the scheduled module and the manifest's `tuning` record. A cross target cannot
    measure kernels here: it tunes (if asked) and reads the host's records, matched by workload.
    """
    import tvm
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    trials = int(options.tune or 0)
    seconds = options.tune_time
    if trials < 0 or (seconds is not None and seconds <= 0):
        raise OptionError("--tune and --tune-time must be positive")
    report = options.on_progress
    device = options.device if cross else None
    on_device = device is not None and bool(trials or seconds)
    # A cross target without a device to measure on reads its own records when an earlier
    # compile tuned on a device, else it reads (and tunes) the host's, matched by workload.
    measure_target = target
    if cross and not on_device and not (database_dir(target) / RECORDS).is_file():
        measure_target = host_target(None, options.threads)
    work_dir = database_dir(measure_target)
    work_dir.mkdir(parents=True, exist_ok=True)

    mod = _lower(mod, target, kernels)
    tasks = ms.relax_integration.extract_tasks(mod, tvm.target.Target(measure_target))
    db = ms.database.JSONDatabase(work_dir=str(work_dir))
    missing = [t for t in tasks if not _has_record(db, t.dispatched[0])]
    info: dict[str, Any] = {
        "database": str(work_dir),
        "tasks": len(tasks),
        "tasks_from_database": len(tasks) - len(missing),
        "trials_requested": trials,
        "trials_run": 0,
        "trials_ok": 0,
        "seconds": 0.0,
    }
    if measure_target is not target:
        info["records_measured_on"] = (
            f"this host ({measure_target['mtriple']}, {measure_target['mcpu']}); applied to "
            f"{target['mtriple']} by workload, not measured on the device"
        )
    if (trials or seconds) and missing:
        _quiet_metaschedule()
        if on_device:
            builder, runner, where = _device_tools(device)
            info["records_measured_on"] = where + (
                " (emulated timings: no guide to a real device's best schedules)"
                if "emulated" in where
                else ""
            )
        else:  # (a LocalBuilder starts a worker process to check itself: only when tuning)
            builder = ms.builder.LocalBuilder(
                f_build=_build_without_tensor_intrin, timeout_sec=300.0
            )
            runner = ms.runner.LocalRunner(timeout_sec=120.0)
        per_task = max(1, trials // len(missing)) if trials else DEFAULT_TRIALS_PER_TASK
        total = per_task * len(missing)
        if trials and trials < len(missing):
            log.warning(
                "--tune %d < %d tasks: giving every task 1 trial (%d in all)",
                trials,
                len(missing),
                total,
            )
        stats = TuneStats()
        names = [t.task_name for t in missing]
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            missing, str(work_dir), num_threads=max(1, os.cpu_count() or 1)
        )
        t0 = time.perf_counter()
        deadline = time.monotonic() + seconds if seconds else None  # from the first trial on
        stopped: list[bool] = []
        ms.tune.tune_tasks(
            tasks=contexts,
            task_weights=weights,
            work_dir=str(work_dir),
            max_trials_global=total,
            max_trials_per_task=per_task,
            num_trials_per_iter=min(16, per_task),  # small batches: every task early
            builder=builder,
            runner=runner,
            database=db,
            measure_callbacks=[
                *ms.measure_callback.MeasureCallback.create("default"),
                _progress_callback(stats, names, total, report),
            ],
            task_scheduler=_round_robin(deadline, stopped),
        )
        if stopped:
            info["stopped"] = f"--tune-time {seconds:g} s reached"
        info.update(
            trials_run=stats.trials,
            trials_ok=stats.ok,
            build_errors=stats.build_errors,
            run_errors=stats.run_errors,
            per_task_cap=per_task,
            seconds=round(time.perf_counter() - t0, 2),
        )
        if stats.ok == 0:
            first = stats.first_error.strip().splitlines()
            raise TuningError(
                f"tuning ran {stats.trials} trials and none was measured "
                f"({stats.build_errors} build, {stats.run_errors} run errors): "
                + (first[-1] if first else "no candidate was generated")
            )
        db = ms.database.JSONDatabase(work_dir=str(work_dir))
        missing = [t for t in tasks if not _has_record(db, t.dispatched[0])]
    info["tasks_untuned"] = [t.task_name for t in missing]
    info["tuned"] = not missing and bool(tasks)
    if missing and (trials or seconds):
        log.warning(
            "%d of %d tasks have no tuning record (budget ran out): %s",
            len(missing),
            len(tasks),
            ", ".join(info["tasks_untuned"][:5]),
        )
    with tvm.target.Target(target), db:  # the open database, not a second one from disk
        mod = relax.transform.MetaScheduleApplyDatabase()(mod)
    return mod, info
