"""How every figure of the report looks: seaborn's style, one colour and marker per method
variant (the same in every figure), legends beside the axes, the setting's title, the seed bands,
and atomic PNG and PDF files without timestamps (reproducible byte for byte)."""
from __future__ import annotations

import io
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from eebench.records import write_atomic
from eebench.report.table import method_rank

PNG_DPI = 110

COST_LABEL = "normalised Mul-Add (cost)"

@contextmanager
def style() -> Iterator[None]:
    """seaborn's whitegrid style and paper context, for drawing and saving a figure."""
    import seaborn as sns

    with sns.axes_style("whitegrid"), sns.plotting_context("paper", font_scale=1.25):
        yield

def new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")

def save(fig: Any, base: Path) -> list[Path]:
    """Write ``base.png`` (PNG_DPI) and ``base.pdf`` atomically, without timestamps in the PDF."""
    out = []
    for ext, kw in (("png", {"dpi": PNG_DPI, "metadata": {"Software": None}}),
                    ("pdf", {"metadata": {"CreationDate": None, "Creator": None, "Producer": None}})):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, **kw)
        path = base.with_suffix(f".{ext}")
        write_atomic(path, buf.getvalue())
        out.append(path)
    return out

def palette(variants: list[str]) -> dict[str, Any]:
    """One colour per method variant, the same in every figure: the six methods get fixed,
    well-separated colours of seaborn's colorblind palette (JEI-DNN vermillion); variants of one
    method and other methods take the palette's remaining colours in canonical order."""
    import seaborn as sns

    cb = sns.color_palette("colorblind", 10)
    fixed = {"threshold": cb[0], "boosted": cb[9], "l2w": cb[2], "eenet": cb[1], "diffbranch": cb[4], "jei": cb[3]}
    spare = [cb[i] for i in (7, 5, 8, 6)] + sns.color_palette("dark", 10)
    out: dict[str, Any] = {}
    n_spare = 0
    for name in sorted(set(variants), key=method_rank):
        base = name.split("[", 1)[0]
        if base in fixed and fixed[base] not in out.values():
            out[name] = fixed[base]
        else:
            out[name] = spare[n_spare % len(spare)]
            n_spare += 1
    return out

MARKERS = ("o", "X", "s", "P", "D", "^", "v", "<", ">", "p", "h", "*")

def marker_map(colours: dict[str, Any]) -> dict[str, str]:
    """One marker per variant, in the order of :func:`palette` (the same in every figure)."""
    return {v: MARKERS[i % len(MARKERS)] for i, v in enumerate(colours)}

def method_legend(ax: Any, order: list[str], colours: dict[str, Any]) -> None:
    """Legend right of ``ax``: line and marker per method (a method whose seeds share no budget
    range shows as markers only), then the other labelled artists (backbone)."""
    from matplotlib.lines import Line2D

    marks = marker_map(colours)
    handles = [Line2D([], [], color=colours[v], marker=marks[v], lw=1.6, markersize=6) for v in order]
    labels = list(order)
    for h, lab in zip(*ax.get_legend_handles_labels()):
        if lab not in labels:
            handles.append(h)
            labels.append(lab)
    if ax.get_legend() is not None:
        ax.get_legend().remove()
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize="small")

def legend_outside(ax: Any, title: str | None = None) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if ax.get_legend() is not None:
        ax.get_legend().remove()
    if handles:
        ax.legend(handles, labels, title=title, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
                  fontsize="small")

def setting_title(setting: pd.DataFrame) -> str:
    first = setting.iloc[0]
    seeds = setting.groupby("variant")["seed"].nunique()
    s = f"{int(seeds.min())}" if seeds.min() == seeds.max() else f"{int(seeds.min())}–{int(seeds.max())}"
    return f"{first['dataset']} / {first['backbone']} ({s} seed{'' if s == '1' else 's'})"

def sd_band(upper: float = float("inf")) -> Any:
    """A seaborn ``errorbar`` callable: mean ± sample std over seeds (as ``errorbar="sd"``), clipped
    to [0, ``upper``], since every quantity plotted here (accuracy %, ECE %, set size, α̂) is
    non-negative and the percentages stop at 100.

    Returns:
        a function of a 1-D array of per-seed values giving ``(low, high)``.
    """
    def band(values: Any) -> tuple[float, float]:
        v = pd.Series(values, dtype=float)
        mean, sd = v.mean(), v.std()
        sd = 0.0 if np.isnan(sd) else sd
        return max(0.0, mean - sd), min(upper, mean + sd)
    return band
