"""Published claims about long-range dependencies, re-run at CPU scale (``jaxseq.reproduce``).

    python benchmarks/reproduce.py [--quick] [--only NAMES] [--budget-minutes M] [--seed S]

The experiments live in ``jaxseq.reproduce`` (also ``jaxseq reproduce``, which works from an
installed package); this entry point writes the report to ``benchmarks/results/``:
``reproduce.md``, or ``reproduce-quick.md`` with ``--quick``.
"""
import pathlib
import sys

from jaxseq import reproduce

RESULTS = pathlib.Path(__file__).resolve().parent / "results"

if __name__ == "__main__":
  sys.exit(reproduce.main(prog="python benchmarks/reproduce.py", folder=RESULTS))
