"""Side-by-side tables and plots of evaluation results (one row per model and protocol)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmrec.io import atomic_path


def results_table(rows: Sequence[dict[str, Any]], k: int = 10) -> str:
    """A fixed-width table: model, seen-item policy, Recall/NDCG/MRR@k with 95% CIs, times."""
    header = (
        f"{'model':<22}{'seen':>9}  {'Recall@' + str(k):>21}  {'NDCG@' + str(k):>21}  "
        f"{'MRR@' + str(k):>8}  {'cover':>6}  {'invalid':>7}  {'train s':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:

        def cell(name: str, r: dict[str, Any] = r) -> str:
            low, high = r.get(f"{name}@{k}_ci_low"), r.get(f"{name}@{k}_ci_high")
            ci = f" [{low:.3f},{high:.3f}]" if low is not None else ""
            return f"{r[f'{name}@{k}']:.4f}{ci}"

        train = r.get("train_seconds")
        lines.append(
            f"{r['model']:<22}{'excluded' if r['exclude_seen'] else 'kept':>9}  "
            f"{cell('recall'):>21}  {cell('ndcg'):>21}  {r[f'mrr@{k}']:>8.4f}  "
            f"{r[f'coverage@{k}']:>6.1%}  {r[f'invalid@{k}']:>7.1%}  "
            f"{'' if train is None else f'{train:.0f}':>8}"
        )
    return "\n".join(lines)


def plot_results(rows: Sequence[dict[str, Any]], ks: Sequence[int], path: str | Path) -> Path:
    """Save NDCG@K and Recall@K curves (95 % CI bands) and a popularity-bias plot, as ``path``
    (PNG) and the same figure as SVG beside it.

    One colour per model; the line style (and marker) says the seen-item protocol: solid/circle
    = seen items kept, dashed/triangle = excluded.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    models = list(dict.fromkeys(r["model"] for r in rows))
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(models)}
    styles: dict[bool, tuple[Any, str, str]] = {
        False: ("-", "o", "seen kept"),
        True: ("--", "^", "seen excluded"),
    }
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    for r in rows:
        line, marker, _ = styles[bool(r["exclude_seen"])]
        colour = colours[r["model"]]
        for ax, metric in zip(axes[:2], ("ndcg", "recall"), strict=True):
            values = [r[f"{metric}@{k}"] for k in ks]
            ax.plot(ks, values, line, marker=marker, color=colour)
            low = [r.get(f"{metric}@{k}_ci_low") for k in ks]
            high = [r.get(f"{metric}@{k}_ci_high") for k in ks]
            if all(v is not None for v in low + high):
                ax.fill_between(ks, low, high, color=colour, alpha=0.12, linewidth=0)
        k = max(ks)
        axes[2].scatter(r[f"popularity@{k}"], r[f"ndcg@{k}"], s=70, marker=marker, color=colour)
    model_handles = [Line2D([], [], color=colours[m], lw=3, label=m) for m in models]
    style_handles = [
        Line2D([], [], color="grey", linestyle=line, marker=marker, label=label)
        for line, marker, label in styles.values()
    ]
    for ax, title in zip(axes[:2], ("NDCG@K", "Recall@K"), strict=True):
        ax.set_xlabel("K")
        ax.set_xticks(list(ks))
        ax.set_title(f"{title} (bands: 95 % CI)")
        ax.grid(alpha=0.3)
        ax.legend(handles=model_handles + style_handles, fontsize=8, loc="upper left")
    axes[2].set_xlabel(f"mean popularity of top-{max(ks)} items (share of train interactions)")
    axes[2].set_ylabel(f"NDCG@{max(ks)}")
    axes[2].set_title("accuracy vs popularity bias")
    axes[2].grid(alpha=0.3)
    axes[2].legend(handles=model_handles + style_handles, fontsize=8, loc="best")
    fig.tight_layout()
    path = Path(path)
    for target, fmt in ((path, "png"), (path.with_suffix(".svg"), "svg")):
        with atomic_path(target) as tmp:
            fig.savefig(tmp, dpi=110, format=fmt)
    plt.close(fig)
    return path
