"""Figures of the gradient-flow lab (matplotlib, written to files; no display needed).

    from jaxseq import experiments, plots
    profiles = experiments.lag_profiles("adding", cells, length=200)   # log-norms
    plots.plot_lag_profiles("gradflow.png", profiles, "adding, T = 200", log=True)
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


def _relative_log10(norms: np.ndarray, log: bool) -> np.ndarray:
  """``log10`` of the norms relative to lag 0 (NaN where not finite: gaps in the curve)."""
  norms = np.asarray(norms, dtype=np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    logs = norms if log else np.log(norms)
    rel = (logs - logs[0]) / np.log(10.0)
  return np.where(np.isfinite(rel), rel, np.nan)


def _panels(plt, count: int, columns: int = 3):
  """A figure with ``count`` panels sharing the y axis, at most ``columns`` per row."""
  columns = min(count, columns)
  rows = -(-count // columns)
  fig, axes = plt.subplots(rows, columns, figsize=(5.5 * columns, 4 * rows), squeeze=False,
                           sharey=True)
  axes = list(axes.flat)
  for ax in axes[count:]:
    ax.set_visible(False)
  return fig, axes[:count]


def _finish(fig, axes, ticker, path, title: str) -> None:
  for ax in axes:
    ax.yaxis.set_major_locator(ticker.MaxNLocator(nbins=8, integer=True))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"$10^{{{v:g}}}$"))
    ax.set_xlabel(r"lag $k = T-1-t$")
    ax.grid(True, alpha=0.3)
    ax.legend()
  axes[0].set_ylabel(r"$\|\partial L / \partial h_t\| \;/\; \|\partial L / \partial h_{T-1}\|$"
                     "  (h: the carry)")
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(os.fspath(path), dpi=100)


def plot_lag_profiles(path: str | os.PathLike, profiles: Mapping[str, Mapping[str, np.ndarray]],
                      title: str, *, log: bool = False) -> None:
  r"""One panel per phase (three to a row): each cell's gradient norm relative to lag 0,
  against the lag, on a log scale.

  The curves are drawn as ``log10`` of the relative norm on a linear axis labelled in
  powers of ten, so decays past float64's range (1e-308) show: pass log-norms from
  ``gradflow.grad_norms(..., log=True)`` (or ``jaxseq.experiments.lag_profiles``) with
  ``log=True``. Zero norms (underflow, padding; ``-inf`` log-norms) leave gaps.

  Args:
    path: the image file to write (its suffix picks the format, e.g. ``.png``).
    profiles: ``profiles[phase][cell]``, norms indexed by lag, or natural-log norms with
      ``log`` (as ``jaxseq.experiments.lag_profiles`` returns).
    title: the figure's title.
    log: the profiles hold natural-log norms.
  """
  plt, ticker = _start(profiles, log)
  fig, axes = _panels(plt, len(profiles))
  for ax, phase in zip(axes, profiles):
    for cell, norms in profiles[phase].items():
      rel = _relative_log10(norms, log)
      ax.plot(np.arange(rel.shape[0]), rel, label=cell)
    ax.set_title(phase)
  try:
    _finish(fig, axes, ticker, path, title)
  finally:
    plt.close(fig)


def plot_training_profiles(path: str | os.PathLike,
                           profiles: Mapping[str, Mapping[str, np.ndarray]], title: str, *,
                           log: bool = False) -> None:
  r"""Gradient flow during training: one panel per cell, one curve per phase (``"init"``,
  ``"step N"``, ...) coloured from dark (early) to light (late), each the gradient norm
  relative to lag 0 against the lag, drawn as in ``plot_lag_profiles``.

  Args:
    path: the image file to write.
    profiles: ``profiles[phase][cell]`` as for ``plot_lag_profiles``, phases in training
      order.
    title: the figure's title.
    log: the profiles hold natural-log norms.
  """
  plt, ticker = _start(profiles, log)
  cells = list(dict.fromkeys(cell for by_cell in profiles.values() for cell in by_cell))
  if not cells:
    _checks.fail("profiles", "at least one cell", "none")
  colours = plt.get_cmap("viridis")(np.linspace(0.0, 0.9, len(profiles)))
  fig, axes = _panels(plt, len(cells))
  for ax, cell in zip(axes, cells):
    for colour, (phase, by_cell) in zip(colours, profiles.items()):
      if cell in by_cell:
        rel = _relative_log10(by_cell[cell], log)
        ax.plot(np.arange(rel.shape[0]), rel, color=colour, label=phase)
    ax.set_title(cell)
  try:
    _finish(fig, axes, ticker, path, title)
  finally:
    plt.close(fig)


def _start(profiles, log):
  if not isinstance(log, bool):
    _checks.fail("log", "a bool", repr(log), TypeError)
  if not isinstance(profiles, Mapping):
    _checks.fail("profiles", "a mapping {phase: {cell: norms}}", type(profiles).__name__,
                 TypeError)
  if not profiles:
    _checks.fail("profiles", "at least one phase", "none")
  plt = _pyplot()
  return plt, _checks.require("matplotlib.ticker", "matplotlib", "plotting")
