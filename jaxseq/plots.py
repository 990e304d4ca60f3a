"""Figures of the gradient-flow lab (matplotlib, written to files; no display needed).

    from jaxseq import experiments, plots
    profiles = experiments.lag_profiles("adding", cells, length=200)
    plots.plot_lag_profiles("gradflow.png", profiles, "adding, T = 200")
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from jaxseq import _checks


def _pyplot():
  """matplotlib's pyplot on the file-only Agg backend, or a one-line ImportError."""
  matplotlib = _checks.require("matplotlib", "matplotlib", "plotting")
  matplotlib.use("Agg")
  return _checks.require("matplotlib.pyplot", "matplotlib", "plotting")


def plot_lag_profiles(path: str | os.PathLike, profiles: Mapping[str, Mapping[str, np.ndarray]],
                      title: str, *, log: bool = False) -> None:
  r"""One panel per phase: each cell's gradient norm relative to lag 0, against the lag,
  on a log scale.

  The curves are drawn as ``log10`` of the relative norm on a linear axis labelled in
  powers of ten, so decays past float64's range (1e-308) show: pass log-norms from
  ``gradflow.grad_norms(..., log=True)`` with ``log=True``. Zero norms (underflow,
  padding; ``-inf`` log-norms) leave gaps.

  Args:
    path: the image file to write (its suffix picks the format, e.g. ``.png``).
    profiles: ``profiles[phase][cell]``, norms indexed by lag (as
      ``jaxseq.experiments.lag_profiles`` returns), or natural-log norms with ``log``.
    title: the figure's title.
    log: the profiles hold natural-log norms.
  """
  if not isinstance(log, bool):
    _checks.fail("log", "a bool", repr(log), TypeError)
  plt = _pyplot()
  ticker = _checks.require("matplotlib.ticker", "matplotlib", "plotting")
  phases = list(profiles)
  if not phases:
    _checks.fail("profiles", "at least one phase", "none")
  fig, axes = plt.subplots(1, len(phases), figsize=(5.5 * len(phases), 4), squeeze=False,
                           sharey=True)
  for ax, phase in zip(axes[0], phases):
    for cell, norms in profiles[phase].items():
      norms = np.asarray(norms, dtype=np.float64)
      with np.errstate(divide="ignore", invalid="ignore"):
        logs = norms if log else np.log(norms)
        rel = (logs - logs[0]) / np.log(10.0)  # log10 of the norm relative to lag 0
      ax.plot(np.arange(norms.shape[0]), np.where(np.isfinite(rel), rel, np.nan), label=cell)
    ax.yaxis.set_major_locator(ticker.MaxNLocator(nbins=8, integer=True))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"$10^{{{v:g}}}$"))
    ax.set_xlabel(r"lag $k = T-1-t$")
    ax.set_title(phase)
    ax.grid(True, alpha=0.3)
    ax.legend()
  axes[0][0].set_ylabel(r"$\|\partial L / \partial h_t\| \;/\; \|\partial L / \partial h_{T-1}\|$"
                        "  (h: the carry)")
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(os.fspath(path), dpi=100)
  plt.close(fig)
