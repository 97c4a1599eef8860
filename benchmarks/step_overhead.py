"""What a Dagster step adds to rsync: `dagster asset materialize` against bare rsync, alternating.

Starts a real local sshd (OpenSSH + `rrsync -ro`, no rate limit), a portal
simulator with an ended visit for each EPN, and a fresh DAGSTER_HOME holding a
copy of `etc/dagster.yaml`.

The layout is production's (README, "The Dagster instance"): DAGSTER_HOME (the
SQLite storage) on another file system than the destination, by default
/dev/shm while the destination is under the temp folder. On one file system,
SQLite's fsyncs force the write-back of the copied data into the step, which
then pays for it twice (once there, once in its own flush); `--home-dir DIR`
puts DAGSTER_HOME elsewhere, e.g. beside the destination to see that.

Then, in rounds that swap which side goes first:

- ours: `dagster asset materialize -m assyncy_dagster.definitions --select epn_data
  --partition EPN`, exactly as a user types it;
- bare: rsync with the very argv `transfer_command` builds, timed around the process.

Each round runs the sides in ABBA order (BAAB the next round) and takes each
side's mean, so that neither side always meets the slower position.

What is measured of ours, per run:

- the EPN's phase: its `home_seconds` metadata, from just before rsync starts
  to its manifest written (transfer, parsing, walk of home, verification,
  flush, manifest). This is "inside the step" and the ratio the goals are set
  on, against bare rsync and against bare rsync + `sync -f` of the destination
  (ours makes the EPN durable before recording it; bare rsync does not: the
  fair anchor for durability);
- the step: STEP_START -> STEP_SUCCESS in the run's event log (adds the portal
  call, the claim, run tags and events);
- Dagster's start-up: the process's wall time minus the step (interpreter,
  imports and code load, run creation, teardown). The import of our code
  location, on top of `import dagster`, is timed apart once;
- the process's peak memory: the largest resident set of the `dagster asset
  materialize` process or any child (wait4's ru_maxrss, the process's VmHWM;
  with the in-process executor the step runs in it), and the sum over its
  tree, sampled every 0.1 s.

Every copy is made into a destination never used before: the one before is moved aside, and
all are deleted at the end. Deleting a copy of 100,000 files just before the next one made
ext4 look past each inode freed in the last 60 s, or 300 s while its inode table block is
not yet written back (`recently_deleted` in fs/ext4/ialloc.c, on a file system without a
journal, as this machine's; seen with `perf`: a third of the machine's time) for every file
the next copy created, so
the side that ran right after a deletion took up to four times as long (2.7 s against 12 s
for the same bare rsync); a destination gains new EPNs, it does not lose 100,000 files a
minute.

Every round also materialises a tiny EPN (one 1 KiB file): the step's fixed
cost; "step - tiny step" is printed as before.

Scenarios (goal in brackets, on the median of the per-round ratios of the phase):
  big     one 1 GiB EPN in 4 files, first copy: throughput ours/bare [>= 0.97]
  noop    a 10,000-file EPN already home (and its manifest): phase ours/bare [<= 1.1]
  first   the same EPN into an empty destination: phase ours/bare    [<= 1.2]
          (`--files 100000`: the 100,000-file first copy, peak memory < 400 MiB)

    .venv/bin/python benchmarks/step_overhead.py [--rounds 5] [--only big,noop,first] [--files N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import dagster as dg
from daemon_bench import BIN, fresh_dagster_home, portal_data, visit

from assyncy_dagster.config import load_settings
from assyncy_dagster.epn import destination_for
from assyncy_dagster.transfer import SshEndpoint, transfer_command
from assyncy_dagster_demo.portal_sim import PortalSimulator
from assyncy_dagster_demo.testing.smtp_sink import SmtpSink
from assyncy_dagster_demo.testing.sshd import LocalSshd
from assyncy_dagster_demo.testing.stack import lay_out_epns, write_config

TINY, BIG, MANY = "30001a", "30002a", "30003a"
PROJECT = "bench"
GIB = 1 << 30
GOALS = {"big": (0.97, True), "noop": (1.1, False), "first": (1.2, False)}
MEMORY_GOAL_MIB = 400
PROFILE_TO: Path | None = None
METADATA = ("home_seconds", "duration_seconds", "flush_seconds", "flush_wait_seconds", "manifest_seconds")


def manifest_metadata(home: Path, run_id: str) -> dict[str, float]:
    """The phase, flush and manifest seconds epn_data's materialisation of the run recorded."""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        events = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
    for event in events:
        meta = event.dagster_event.event_specific_data.materialization.metadata
        if "home_seconds" in meta:
            return {k: float(meta[k].value) for k in METADATA}
    raise RuntimeError(f"run {run_id}: no materialisation with home_seconds")


def step_seconds(home: Path, run_id: str) -> float:
    """STEP_START -> STEP_SUCCESS of the run's epn_data step, from the event log."""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        events = instance.all_logs(run_id, of_type={dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS})
    starts = [e.timestamp for e in events if e.dagster_event.event_type == dg.DagsterEventType.STEP_START]
    ends = [e.timestamp for e in events if e.dagster_event.event_type == dg.DagsterEventType.STEP_SUCCESS]
    if len(starts) != 1 or len(ends) != 1:
        raise RuntimeError(f"run {run_id}: expected one step start and success, got {len(starts)}/{len(ends)}")
    return ends[0] - starts[0]


class TreeMemory:
    """The peak of the summed resident sets of a process and its descendants, sampled."""

    def __init__(self, pid: int, interval: float = 0.1):
        self.pid, self.interval, self.peak = pid, interval, 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _tree(self) -> list[int]:
        pids, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            try:
                for task in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{task}/children") as fh:
                        todo += [int(child) for child in fh.read().split()]
            except OSError:
                continue
        return pids

    def _sample(self) -> None:
        while not self._done.wait(self.interval):
            total = 0
            for pid in self._tree():
                try:
                    with open(f"/proc/{pid}/statm") as fh:
                        total += int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
                except (OSError, IndexError, ValueError):
                    continue
            self.peak = max(self.peak, total)

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return self.peak


def materialize(home: Path, config: Path, epn: str, work: Path) -> dict[str, float]:
    """`dagster asset materialize` of one partition: the step's and the process's seconds, the
    EPN's metadata (home_seconds, flush, manifest) and the process's peak memory in MiB."""
    env = {**os.environ, "DAGSTER_HOME": str(home), "ASSYNCY_CONFIG": str(config)}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        before = {r.dagster_run.run_id for r in instance.get_run_records()}
    argv = [str(BIN / "dagster"), "asset", "materialize", "-m", "assyncy_dagster.definitions"]
    if PROFILE_TO:  # cProfile of the whole process (the step runs in it: the in-process executor)
        argv = [sys.executable, "-m", "cProfile", "-o", str(PROFILE_TO / f"{epn}-{time.time_ns()}.prof"), *argv]
    argv += ["--select", "epn_data", "--partition", epn]
    with open(work / "materialize.out", "w+b") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        memory = TreeMemory(proc.pid)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        tree_peak = memory.stop()
        if proc.returncode != 0:
            out.seek(0)
            raise RuntimeError(f"dagster asset materialize {epn} failed:\n{out.read()[-3000:].decode()}")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        new = [r.dagster_run for r in instance.get_run_records() if r.dagster_run.run_id not in before]
    if len(new) != 1 or new[0].status != dg.DagsterRunStatus.SUCCESS:
        raise RuntimeError(f"expected one successful run for {epn}, got {[(r.run_id, r.status) for r in new]}")
    step = step_seconds(home, new[0].run_id)
    return {
        "step": step,
        "wall": wall,
        "startup": wall - step,
        "peak_mib": usage.ru_maxrss / 1024,  # KiB on Linux
        "tree_peak_mib": tree_peak / 2**20,
        **manifest_metadata(home, new[0].run_id),
    }


def code_load(rounds: int = 3) -> tuple[float, float]:
    """Median seconds of `import dagster`, and of importing our code location on top of it."""
    probe = (
        "import time; t0 = time.perf_counter(); import dagster; t1 = time.perf_counter(); "
        "import assyncy_dagster.definitions; print(t1 - t0, time.perf_counter() - t1)"
    )
    runs = [
        [
            float(x)
            for x in subprocess.run(
                [sys.executable, "-c", probe], capture_output=True, text=True, check=True
            ).stdout.split()
        ]
        for _ in range(rounds)
    ]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def flush(folder: Path) -> float:
    """What making `folder`'s file system durable costs right after a bare rsync (`sync -f`: syncfs)."""
    started = time.perf_counter()
    subprocess.run(["sync", "-f", str(folder)], check=True)
    return time.perf_counter() - started


def bare(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        check=True,
        start_new_session=True,
    )
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds per scenario, alternating order (default 5)")
    parser.add_argument("--only", default="big,noop,first", help="scenarios to run (default big,noop,first)")
    parser.add_argument("--files", type=int, default=10_000, help="files of the many-file EPN (default 10000)")
    parser.add_argument(
        "--destination-dir",
        type=Path,
        default=None,
        help="put the destination root under this folder, e.g. /dev/shm (a separate file system "
        "from DAGSTER_HOME, as a data mover's destination usually is)",
    )
    parser.add_argument(
        "--home-dir",
        type=Path,
        default=Path("/dev/shm"),
        help="put DAGSTER_HOME (the SQLite storage) under this folder (default /dev/shm: another file "
        "system than the destination, production's layout); the destination's own folder puts it beside",
    )
    parser.add_argument("--profile", type=Path, default=None, help="write a cProfile of each run of ours here")
    args = parser.parse_args(argv)
    global PROFILE_TO
    PROFILE_TO = args.profile
    wanted = [s for s in args.only.split(",") if s]

    work = Path(tempfile.mkdtemp(prefix="assyncy-step-"))
    home = destination_root = None
    results: dict[str, dict[str, list[float]]] = {}
    try:
        with (
            LocalSshd() as sshd,
            SmtpSink() as smtp,
            PortalSimulator(
                portal_data(
                    {
                        23: [visit(300000 + i, epn, "now-3d", "now-2d") for i, epn in enumerate((TINY, BIG, MANY))],
                        24: [],
                    }
                )
            ) as portal,
        ):
            lay_out_epns(
                sshd,
                {
                    TINY: {"frame.cbf": 1024},
                    BIG: {f"frames/big_{i}.h5": GIB // 4 for i in range(4)},
                    MANY: {f"run_{i // 100:03d}/img_{i:05d}.cbf": 512 for i in range(args.files)},
                },
            )
            destination_root = (
                Path(tempfile.mkdtemp(prefix="assyncy-step-dest-", dir=args.destination_dir))
                if args.destination_dir
                else work / "destination"
            )
            config = write_config(
                work / "etc" / "config.yml",
                portal_url=portal.url,
                sshd=sshd,
                smtp_port=smtp.port,
                destination_root=destination_root,
                epn_cap_map={"30001": PROJECT, "30002": PROJECT, "30003": PROJECT},
                execute=True,
                max_tasks=2,
            )
            settings = load_settings(config)
            (destination_root / PROJECT).mkdir(parents=True, exist_ok=True)
            home_parent = Path(tempfile.mkdtemp(prefix="assyncy-step-home-", dir=args.home_dir))
            home = fresh_dagster_home(home_parent / "dagster_home")
            same_fs = os.stat(home).st_dev == os.stat(destination_root).st_dev
            with dg.DagsterInstance.from_config(str(home)) as instance:
                instance.add_dynamic_partitions("epn", [TINY, BIG, MANY])
            endpoint = SshEndpoint.from_settings(settings)

            def destination(epn: str) -> Path:
                return destination_for(epn, settings.epn_cap_map, settings.destination_root_path)

            def argv_for(epn: str) -> list[str]:
                return transfer_command(endpoint, epn, destination(epn), dry_run=False)

            moved_aside = Path(f"{destination_root}-moved-aside")
            moved_aside.mkdir()

            def clear(epn: str) -> None:
                # Moved aside, not deleted (see the module docstring): the next copy's inodes are new.
                if destination(epn).parent.exists():
                    destination(epn).parent.rename(moved_aside / f"{epn}-{time.monotonic_ns()}")
                settings.ignore.write_text("---\npreviouslySynched: []\n")
                os.sync()

            materialize(home, config, TINY, work)  # warm the caches once: imports, sshd, page cache
            imports = code_load()
            print(
                f"work folder {work}; DAGSTER_HOME {home}; destination {destination_root} "
                f"({'the SAME file system as DAGSTER_HOME' if same_fs else 'another file system than DAGSTER_HOME'}); "
                f"sshd on port {sshd.port}; {args.rounds} round(s) per scenario\n"
                f"code load: import dagster {imports[0]:.2f} s, then assyncy_dagster.definitions {imports[1]:.2f} s",
                flush=True,
            )
            for scenario in wanted:
                epn = {"big": BIG, "noop": MANY, "first": MANY}[scenario]
                seen: dict[str, list] = {"ours": [], "bare": [], "bare_flush": [], "ours_tiny": [], "bare_tiny": []}
                if scenario == "noop":
                    # Already home, as a re-sync finds it: the data (bare rsync's copy) and, as for
                    # any EPN this project brought home, its manifest (one run of ours, not counted).
                    clear(epn)
                    bare(argv_for(epn))
                    materialize(home, config, epn, work)
                for round_ in range(args.rounds):
                    clear(TINY)
                    seen["ours_tiny"].append(materialize(home, config, TINY, work)["step"])
                    clear(TINY)
                    seen["bare_tiny"].append(bare(argv_for(TINY)))
                    # ABBA within the round (BAAB the next): whichever position is slower on this
                    # machine at the moment, each side gets one early and one late run; a side's
                    # figure for the round is the mean of its two runs.
                    ours: list[dict[str, float]] = []
                    bares: list[float] = []
                    flushes: list[float] = []
                    first, second = ("bare", "ours") if round_ % 2 == 0 else ("ours", "bare")
                    for side in (first, second, second, first):
                        if scenario != "noop":
                            clear(epn)
                        if side == "bare":
                            bares.append(bare(argv_for(epn)))
                            flushes.append(flush(destination(epn)))
                        else:
                            ours.append(materialize(home, config, epn, work))
                    mean = {k: statistics.fmean(run[k] for run in ours) for k in ours[0]}
                    mean["peak_mib"] = max(run["peak_mib"] for run in ours)
                    mean["tree_peak_mib"] = max(run["tree_peak_mib"] for run in ours)
                    seen["ours"].append(mean)
                    seen["bare"].append(statistics.fmean(bares))
                    seen["bare_flush"].append(statistics.fmean(flushes))
                    print(
                        f"{scenario} round {round_ + 1}: ours phase {mean['home_seconds']:.3f} s (rsync "
                        f"{mean['duration_seconds']:.3f} s, flush "
                        f"{mean['flush_seconds']:.3f} s, of it waited {mean['flush_wait_seconds']:.3f} s; manifest "
                        f"{mean['manifest_seconds']:.3f} s), step {mean['step']:.3f} s (tiny step "
                        f"{seen['ours_tiny'][-1]:.3f} s), process {mean['wall']:.3f} s, peak "
                        f"{mean['peak_mib']:.0f} MiB (tree {mean['tree_peak_mib']:.0f} MiB); "
                        f"bare {seen['bare'][-1]:.3f} s "
                        f"(then sync -f {seen['bare_flush'][-1]:.3f} s; tiny {seen['bare_tiny'][-1]:.3f} s)",
                        flush=True,
                    )
                results[scenario] = seen
                clear(epn)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if destination_root is not None:
            shutil.rmtree(f"{destination_root}-moved-aside", ignore_errors=True)
        if home is not None:
            shutil.rmtree(home.parent, ignore_errors=True)
        if args.destination_dir and destination_root is not None:
            shutil.rmtree(destination_root, ignore_errors=True)
    return report(results)


def spread(values: list[float], unit: str = "s", digits: int = 3) -> str:
    """min / median / max of `values`."""
    return "/".join(f"{v:.{digits}f}" for v in (min(values), statistics.median(values), max(values))) + f" {unit}"


def report(results: dict[str, dict[str, list]]) -> int:
    failed = 0
    print()
    for scenario, seen in results.items():
        goal, higher = GOALS[scenario]
        ours = seen["ours"]
        phase = [run["home_seconds"] for run in ours]
        bare_s, bare_sync = seen["bare"], [b + f for b, f in zip(seen["bare"], seen["bare_flush"], strict=True)]
        if scenario == "big":
            ratios = [b / p for p, b in zip(phase, bare_s, strict=True)]  # throughput ours / bare
            durable = [b / p for p, b in zip(phase, bare_sync, strict=True)]
        else:
            ratios = [p / b for p, b in zip(phase, bare_s, strict=True)]
            durable = [p / b for p, b in zip(phase, bare_sync, strict=True)]
        stepped = [run["step"] - tiny for run, tiny in zip(ours, seen["ours_tiny"], strict=True)]
        print(f"{scenario} (min/median/max over {len(ours)} rounds):")
        print(f"  ours, the EPN's phase in the step  {spread(phase)}")
        print(f"    of it rsync (with our parsing)   {spread([r['duration_seconds'] for r in ours])}")
        print(f"  bare rsync                         {spread(bare_s)}")
        print(f"  bare rsync + sync -f               {spread(bare_sync)}")
        print(
            f"  ours' flush {spread([r['flush_seconds'] for r in ours])} beside the verification, of it waited "
            f"{spread([r['flush_wait_seconds'] for r in ours])}; "
            f"manifest {spread([r['manifest_seconds'] for r in ours])}"
        )
        print(
            f"  step {spread([r['step'] for r in ours])}; step - tiny step {spread(stepped)}; "
            f"tiny step {spread(seen['ours_tiny'])}"
        )
        print(
            f"  process {spread([r['wall'] for r in ours])}, of it Dagster's start-up and teardown outside the step "
            f"{spread([r['startup'] for r in ours])}"
        )
        peak = max(r["peak_mib"] for r in ours)
        print(
            f"  peak memory of the materialize process {spread([r['peak_mib'] for r in ours], 'MiB', 0)} "
            f"(its tree, summed: {spread([r['tree_peak_mib'] for r in ours], 'MiB', 0)}); "
            f"goal < {MEMORY_GOAL_MIB} MiB: "
            f"{'met' if peak < MEMORY_GOAL_MIB else 'MISSED'}"
        )
        failed += peak >= MEMORY_GOAL_MIB
        ratio = statistics.median(ratios)
        met = ratio >= goal if higher else ratio <= goal
        failed += not met
        what = "throughput ours/bare" if scenario == "big" else "ours/bare"
        print(
            f"  {what}: median {ratio:.3f} (goal {'>=' if higher else '<='} {goal}): {'met' if met else 'MISSED'}; "
            f"per round {', '.join(f'{r:.3f}' for r in ratios)}\n"
            f"  against bare + sync -f: median {statistics.median(durable):.3f}; "
            f"per round {', '.join(f'{r:.3f}' for r in durable)}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
