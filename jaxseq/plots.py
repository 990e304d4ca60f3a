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
                      title: str) -> None:
  r"""One panel per phase: each cell's gradient norm relative to lag 0, against the lag,
  on a log scale.

  Args:
    path: the image file to write (its suffix picks the format, e.g. ``.png``).
    profiles: ``profiles[phase][cell]``, norms indexed by lag (as
      ``jaxseq.experiments.lag_profiles`` returns).
    title: the figure's title.
  """
  plt = _pyplot()
  phases = list(profiles)
  if not phases:
    _checks.fail("profiles", "at least one phase", "none")
  fig, axes = plt.subplots(1, len(phases), figsize=(5.5 * len(phases), 4), squeeze=False,
                           sharey=True)
  tiny = np.finfo(np.float64).tiny
  for ax, phase in zip(axes[0], phases):
    for cell, norms in profiles[phase].items():
      norms = np.asarray(norms, dtype=np.float64)
      rel = norms / norms[0] if norms[0] > 0 else np.full_like(norms, np.nan)
      # log axes cannot show exact zeros (underflow): clip them to the smallest positive value.
      ax.plot(np.arange(norms.shape[0]), np.where(rel > 0, rel, tiny), label=cell)
    ax.set_yscale("log")
    ax.set_xlabel(r"lag $k = T-1-t$")
    ax.set_title(phase)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
  axes[0][0].set_ylabel(r"$\|\partial L / \partial h_t\| \;/\; \|\partial L / \partial h_{T-1}\|$"
                        "  (h: the carry)")
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(os.fspath(path), dpi=100)
  plt.close(fig)
