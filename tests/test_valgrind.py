"""benchmarks.compare reads valgrind's own summary lines, callgrind's and cachegrind's."""

from __future__ import annotations

import pytest

from benchmarks._valgrind import valgrind_counts

# The end of a cachegrind run with --cache-sim=yes --branch-sim=yes (valgrind 3.19).
CACHEGRIND = """\
==30909== I   refs:      3,152,664,471
==30909== I1  misses:       10,982,335
==30909== LLi misses:           28,213
==30909== I1  miss rate:          0.35%
==30909== LLi miss rate:          0.00%
==30909==
==30909== D   refs:      1,377,438,076  (939,133,487 rd   + 438,304,589 wr)
==30909== D1  misses:       27,887,706  ( 23,089,110 rd   +   4,798,596 wr)
==30909== LLd misses:          508,594  (     98,741 rd   +     409,853 wr)
==30909== D1  miss rate:           2.0% (        2.5%     +         1.1%  )
==30909== LL misses:           536,807  (    126,954 rd   +     409,853 wr)
==30909==
==30909== Branches:        602,476,941  (538,421,542 cond +  64,055,399 ind)
==30909== Mispredicts:      54,467,568  ( 37,208,813 cond +  17,258,755 ind)
==30909== Mispred rate:            9.0% (        6.9%     +        26.9%   )
"""

CALLGRIND = """\
==447==
==447== Events    : Ir
==447== Collected : 1471230724
==447==
==447== I   refs:      1,471,230,724
"""


def test_cachegrind_gives_instructions_first_level_misses_and_mispredicts() -> None:
    assert valgrind_counts(CACHEGRIND) == {
        "instructions": 3_152_664_471,
        "D1 misses": 27_887_706,  # reads and writes, not the miss rate or LL's
        "mispredicts": 54_467_568,  # not the rate
    }


def test_callgrind_gives_instructions_alone() -> None:
    assert valgrind_counts(CALLGRIND) == {"instructions": 1_471_230_724}


def test_a_run_without_a_summary_is_an_error_not_a_zero() -> None:
    with pytest.raises(RuntimeError, match="no valgrind summary"):
        valgrind_counts("Traceback (most recent call last):\n  ...\nValueError: x\n")
