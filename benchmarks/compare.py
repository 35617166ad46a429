"""Compare ghl_async trees side by side: CPU per page and event-loop callbacks per page.

For a change to the hot path: check out the versions to compare (``git worktree add``)
and give each a label::

    python -m benchmarks.compare before=/path/to/main after=.
    python -m benchmarks.compare before=/path/to/main after=. \
        "floor=.::floor: 16 workers, aiohttp + msgspec"
    python -m benchmarks.compare before=/path/to/main after=. --instructions
    python -m benchmarks.compare before=/path/to/main after=. --cache

(``PATH::CLIENT`` runs another client of the throughput benchmark from that tree.)

Every tree runs in a fresh process per round against one fake server (its own process),
and each process does one warm-up, one timed run and one counted run
(benchmarks/_loopcount.py). The order of the trees turns each round (rotated one place:
for two, alternated), so neither always runs first. The CPU figure is paired: within each
round, each tree's CPU over the first tree's, then the median of those ratios over the
rounds, with their interquartile range and range. On a shared 2-core machine the medians
of each side taken apart drift by +-0.2x from run to run; the paired median holds to a
few hundredths. The callbacks per page are the steadiest figure of all. Every child runs
with glibc's mmap threshold held (``MALLOC_MMAP_THRESHOLD_``, unless set already): see
``docs/benchmarks.md``, "What the conversation path's ratio is made of".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ._harness import Paired, fake_server, turned
from ._valgrind import valgrind_counts
from .throughput import clients, pages_of

REPO = Path(__file__).resolve().parent.parent
PAGES_CLIENT = "ghl_async fan_out_pages"
# The valgrind command lines: --instructions (callgrind), --cache (cachegrind, simulated
# caches and branch predictor). Their summaries are read by _valgrind.valgrind_counts.
_CALLGRIND = ("valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null")
_CACHEGRIND = (
    "valgrind",
    "--tool=cachegrind",
    "--cache-sim=yes",
    "--branch-sim=yes",
    "--cachegrind-out-file=/dev/null",
)


def child() -> None:
    """In the child process: ``URL CLIENT PAGES CONCURRENCY`` as arguments, ids on stdin."""
    import ghl_async

    from ._loopcount import count_calls, run_counted

    url, name, pages, concurrency = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    repeat = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    ids = json.loads(sys.stdin.read())
    warm = clients(url, ids[:2], sdk=False, concurrency=concurrency)[name]
    asyncio.run(warm())  # imports, first connection
    runner = clients(url, ids, sdk=False, concurrency=concurrency)[name]
    if repeat < 0:  # --instructions: -repeat plain runs under callgrind, nothing else
        for _ in range(-repeat):
            asyncio.run(runner())
        print(json.dumps({"tree": ghl_async.__file__}))
        return
    if repeat == 0:  # --calls: count the Python calls of one run, by function
        _, calls = count_calls(runner)
        print(json.dumps({"tree": ghl_async.__file__, **{k: v / pages for k, v in calls.items()}}))
        return
    # The least of ``repeat`` timed runs: what the tree costs, less the machine's noise.
    cpu = wall = float("inf")
    for _ in range(repeat):
        cpu0, wall0 = time.process_time(), time.perf_counter()
        asyncio.run(runner())
        cpu = min(cpu, time.process_time() - cpu0)
        wall = min(wall, time.perf_counter() - wall0)
    _, counts = run_counted(runner)
    result = {
        "tree": ghl_async.__file__,
        "cpu us": cpu / pages * 1e6,
        "wall s": wall,
        **counts.per(pages),
    }
    print(json.dumps(result))


#: glibc's mmap threshold for every child (bytes): above asyncio's 256 KiB read buffer.
ALLOCATOR_MMAP_THRESHOLD = 1_048_576


def _run_child(
    tree: Path,
    url: str,
    client: str,
    pages: int,
    concurrency: int,
    ids: str,
    repeat: int = 1,
    prefix: tuple[str, ...] = (),
) -> dict[str, float]:
    # Import this package from here first, then ghl_async from the tree under test.
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r}); import benchmarks; "
        f"sys.path.insert(0, {str(tree)!r}); "
        "from benchmarks.compare import child; child()"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # Every child in one allocator regime: glibc's moving mmap threshold off, so no
    # side spends a run mapping a fresh buffer per socket read while the other does not
    # (which side does differs from process to process, and moved a paired ratio by
    # several points; over TLS, as against HighLevel, the reads never go that way).
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(ALLOCATOR_MMAP_THRESHOLD))
    argv = [sys.executable, "-c", code, url, client, str(pages), str(concurrency), str(repeat)]
    done = subprocess.run(
        [*prefix, *argv],
        input=ids,
        capture_output=True,
        text=True,
        cwd=tree,
        env=env,
        check=False,
    )
    if done.returncode:
        raise RuntimeError(f"{tree}: {done.stderr[-2000:]}")
    result: dict[str, float] = json.loads(done.stdout.splitlines()[-1])
    if prefix:  # valgrind's counts are on stderr
        result.update(valgrind_counts(done.stderr))
    imported = Path(str(result.pop("tree"))).resolve()
    if imported != (tree / "ghl_async" / "__init__.py").resolve():
        raise RuntimeError(f"{tree}: ghl_async was imported from {imported}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare")
    parser.add_argument(
        "trees", nargs="+", metavar="LABEL=PATH[::CLIENT]", help="a tree with ghl_async/"
    )
    parser.add_argument("--client", default=PAGES_CLIENT, help="a throughput client's name")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--conversations", type=int)
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="timed runs per process, the least CPU kept (steadier on a busy machine)",
    )
    parser.add_argument(
        "--latency",
        action="store_true",
        help="the latency-bound workload instead: 3 pages a conversation, 50 ms a reply, "
        "64 in flight (default 1,000 conversations)",
    )
    parser.add_argument(
        "--calls",
        type=int,
        metavar="N",
        help="instead of timing: count Python calls per page in one run of each tree "
        "(a profile hook) and show the N functions that differ most from the first tree",
    )
    parser.add_argument(
        "--cache",
        action="store_true",
        help="as --instructions, under valgrind's cachegrind with its cache and branch "
        "simulation: instructions, first-level data cache misses and mispredicted branches "
        "per page (why a few percent more instructions can cost several times that in CPU)",
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="instead of timing: count the instructions each tree executes per page under "
        "valgrind's callgrind (one run against three, the difference halved: imports and "
        "warm-up cancel out). The same tree counts the same to about half a percent where "
        "CPU times drift by several: for a change worth one or two percent",
    )
    args = parser.parse_args()
    trees: dict[str, tuple[Path, str]] = {}
    for spec in args.trees:
        label, _, rest = spec.partition("=")
        path, _, client = rest.partition("::")
        trees[label] = (Path(path or ".").resolve(), client or args.client)
    latency = 0.05 if args.latency else 0.0
    conversations = args.conversations or (1000 if args.latency else 200)
    messages, concurrency = ("250", 64) if args.latency else ("1000", 16)
    pages = pages_of(conversations, messages)
    samples: dict[str, list[dict[str, float]]] = {label: [] for label in trees}
    faults = f"latency={latency}" if latency else ""
    with fake_server(conversations=conversations, messages=messages, faults=faults) as server:
        ids = json.dumps(server.stats()["conversationIds"])
        if args.instructions or args.cache:
            _print_valgrind_counts(trees, server.url, pages, concurrency, ids, cache=args.cache)
            return 0
        if args.calls is not None:
            counted = {
                label: _run_child(tree, server.url, client, pages, concurrency, ids, 0)
                for label, (tree, client) in trees.items()
            }
            _print_calls(counted, args.calls)
            return 0
        for number in range(args.rounds):
            for label in turned(list(trees), number):
                tree, client = trees[label]
                sample = _run_child(tree, server.url, client, pages, concurrency, ids, args.repeat)
                samples[label].append(sample)
            print(f"round {number + 1} of {args.rounds} done", file=sys.stderr, flush=True)
    print(
        f"{pages} pages, {concurrency} in flight, {latency * 1000:.0f} ms a reply, "
        f"{args.rounds} rounds, the order turned each round; CPU: the median of the "
        "paired per-round ratios (IQR, range)"
    )
    if latency:
        ideal = pages * latency / concurrency
        for label, rows in samples.items():
            wall = statistics.median(r["wall s"] for r in rows)
            print(f"- {label}: {wall:.2f} s, {100 * ideal / wall:.0f}% of ideal ({ideal:.2f} s)")
    columns = ("cpu us", "callbacks", "task step", "task wake-up", "iterations")
    base = next(iter(trees))
    print(
        f"| tree | {' | '.join(columns)} | events per poll | CPU vs {base}, paired (IQR) | range |"
    )
    print("|---" * (len(columns) + 4) + "|")
    first = [f["cpu us"] for f in samples[base]]
    for label, rows in samples.items():
        med = {key: statistics.median(r.get(key, 0.0) for r in rows) for key in rows[0]}
        # The ratio within each round, then the median: drift between rounds cancels.
        ratio = Paired.of([r["cpu us"] for r in rows], first)
        cells = [f"{med.get(c, 0.0):.{0 if c == 'cpu us' else 2}f}" for c in columns]
        print(
            f"| {label} | {' | '.join(cells)} | {med['events per poll']:.2f} | "
            f"{ratio.cell()} | {ratio.low:.2f}-{ratio.high:.2f} |"
        )
    for label, rows in samples.items():
        if label != base:
            ratio = Paired.of([r["cpu us"] for r in rows], first)
            per_round = ", ".join(
                f"{r['cpu us'] / f:.2f}" for r, f in zip(rows, first, strict=True)
            )
            print(f"- {label} / {base}: {ratio}; per round: {per_round}")
    return 0


def _print_valgrind_counts(
    trees: dict[str, tuple[Path, str]],
    url: str,
    pages: int,
    concurrency: int,
    ids: str,
    *,
    cache: bool = False,
) -> None:
    """Instructions per page of each tree's client, counted by callgrind; with ``cache``,
    by cachegrind, with its first-level data cache misses and mispredicted branches.
    """
    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions and --cache need valgrind (apt install valgrind)")
    grind = _CACHEGRIND if cache else _CALLGRIND
    counts: dict[str, dict[str, float]] = {}
    for label, (tree, client) in trees.items():
        one, three = (
            _run_child(tree, url, client, pages, concurrency, ids, -runs, grind) for runs in (1, 3)
        )
        # One run against three, the difference halved: imports and warm-up cancel out.
        counts[label] = {name: (three[name] - one[name]) / 2 / pages for name in three}
    base = next(iter(counts))
    names = [n for n in ("instructions", "D1 misses", "mispredicts") if n in counts[base]]
    tool = "cachegrind" if cache else "callgrind"
    print(f"{pages} pages, {concurrency} in flight; per page ({tool})")
    print("| tree | " + " | ".join(f"{n} / page | vs {base}" for n in names) + " |")
    print("|---|" + "---|---|" * len(names))
    for label, count in counts.items():
        cells = [f"{count[n]:,.0f} | {count[n] / counts[base][n]:.3f}x" for n in names]
        print(f"| {label} | " + " | ".join(cells) + " |")


def _print_calls(counted: dict[str, dict[str, float]], top: int) -> None:
    """Python and C calls per page of each tree, then the functions that differ most."""
    base = next(iter(counted))
    print("| tree | Python calls / page | C calls / page |")
    print("|---|---|---|")
    for label, calls in counted.items():
        python = sum(v for k, v in calls.items() if not k.startswith("C:"))
        native = sum(v for k, v in calls.items() if k.startswith("C:"))
        print(f"| {label} | {python:.1f} | {native:.1f} |")
    names = sorted({name for calls in counted.values() for name in calls})
    for label, calls in counted.items():
        if label == base:
            continue
        first = counted[base]
        diff = sorted(names, key=lambda n: -abs(calls.get(n, 0.0) - first.get(n, 0.0)))
        print(f"\nper page, {label} against {base} (the {top} largest differences):")
        for name in diff[:top]:
            ours, theirs = calls.get(name, 0.0), first.get(name, 0.0)
            print(f"  {ours - theirs:+7.2f}  {ours:7.2f} vs {theirs:7.2f}  {name}")


if __name__ == "__main__":
    sys.exit(main())
