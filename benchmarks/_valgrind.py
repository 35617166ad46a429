"""valgrind's own summary, read: what ``benchmarks.compare --instructions`` and ``--cache``
count. A module of its own: the suite imports it where the benchmarks' dependencies
(the ``bench`` extra) are not installed.
"""

from __future__ import annotations

__all__ = ["valgrind_counts"]

#: What valgrind prints at the end of a run, by the name of the count per page.
_VALGRIND_LINES = {
    "Collected :": "instructions",  # callgrind
    "I   refs:": "instructions",  # cachegrind
    "D1  misses:": "D1 misses",
    "Mispredicts:": "mispredicts",
}


def valgrind_counts(stderr: str) -> dict[str, float]:
    """The counts of valgrind's summary on ``stderr`` (callgrind's or cachegrind's),
    by name: ``instructions``, and with cachegrind's simulations ``D1 misses`` (reads
    and writes) and ``mispredicts`` (conditional and indirect branches).
    """
    counts: dict[str, float] = {}
    for line in stderr.splitlines():
        text = line.split("==", 2)[-1]  # "==PID== I   refs:  1,234" -> " I   refs:  1,234"
        for label, name in _VALGRIND_LINES.items():
            head, found, rest = text.partition(label)
            if found and not head.strip():
                counts[name] = float(rest.split()[0].replace(",", ""))
    if "instructions" not in counts:
        raise RuntimeError(f"no valgrind summary in: {stderr[-500:]}")
    return counts
