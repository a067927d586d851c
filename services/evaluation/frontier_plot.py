"""The picture of a quality benchmark (`chunkrec bench quality` writes it next to its JSON):

    write_frontier_png(report, Path("results.png"))

Left: the memory-vs-quality frontier, x = total embedding bytes as % of fixed-64 (log scale,
ticks at round percentages), y = AUC on the last 30% of the stream (error bars: std over
seeds, none with one seed); policies of one kind joined in order of bytes. Hollow markers on a
dotted line: the same runs at their values-only bytes (% of fixed-64's values), the axis the
papers report. Right: each
policy's paired ΔAUC against the reference on the last 30%, with its 95% paired-bootstrap CI
(filled: the CI excludes 0). Titled by the data set's name, not its path.
"""

from __future__ import annotations

from pathlib import Path

from services.evaluation.quality import QualityReport, base_label, dataset_title, policy_kind

# round percentages for the x axis; only those inside the data's range are drawn
_TICKS = (1, 2, 3, 5, 7.5, 10, 15, 20, 25, 30, 40, 50, 60, 75, 100, 150, 200, 300, 500, 1000)


def _ticks(lo: float, hi: float, most: int = 8) -> list[float]:
    """Round percentages spanning [lo, hi], at most `most` of them, evenly thinned from the
    top down (so 100% stays)."""
    inside = [t for t in _TICKS if lo * 0.8 <= t <= hi * 1.25] or [lo, hi]
    step = max(1, -(-len(inside) // most))
    return inside[::-1][::step][::-1]


def write_frontier_png(report: QualityReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = report.rows
    fig, (ax, dx) = plt.subplots(1, 2, figsize=(11, 4.8),
                                 gridspec_kw={"width_ratios": [3, 2]})
    kinds = list(dict.fromkeys(policy_kind(r["policy"]) for r in rows))
    xs = [r["pct_of_base"] for r in rows]
    xs += [r["value_pct_of_base"] for r in rows if r.get("value_pct_of_base", 0) > 0]
    x_mid = (min(xs) * max(xs)) ** 0.5
    for k, kind in enumerate(kinds):
        mine = sorted((r for r in rows if policy_kind(r["policy"]) == kind),
                      key=lambda r: r["pct_of_base"])
        yerr = [r["auc_last30_std"] if r["seeds"] > 1 else 0.0 for r in mine]
        ax.errorbar([r["pct_of_base"] for r in mine], [r["auc_last30"] for r in mine],
                    yerr=yerr, marker="o", capsize=3, color=f"C{k}", label=kind)
        vals = sorted((r for r in mine if r.get("value_pct_of_base", 0) > 0),
                      key=lambda r: r["value_pct_of_base"])
        ax.plot([r["value_pct_of_base"] for r in vals], [r["auc_last30"] for r in vals],
                marker="o", markerfacecolor="white", linestyle=":", color=f"C{k}",
                label="values only (hollow)" if k == 0 else None)
        for r in mine:  # labels point inwards (none runs off the plot); one kind's above
            right = r["pct_of_base"] <= x_mid  # its points, the next kind's below
            ax.annotate(r["policy"], (r["pct_of_base"], r["auc_last30"]), fontsize=7,
                        xytext=(5 if right else -5, 6 if k % 2 == 0 else -6),
                        textcoords="offset points", ha="left" if right else "right",
                        va="bottom" if k % 2 == 0 else "top", annotation_clip=False)
    ax.set_xscale("log")
    ax.set_xticks(_ticks(min(xs), max(xs)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}%"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.margins(x=0.12, y=0.12)
    ax.set_xlabel(f"embedding bytes, total (filled) and values only (hollow), "
                  f"% of {base_label(report)}'s")
    ax.set_ylabel("AUC, last 30% of the stream")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="best")

    others = [r for r in rows if r["policy"] != report.reference]
    for i, r in enumerate(others):
        lo, hi = r["delta_auc_last30_ci"]
        d = r["delta_auc_last30"]
        excludes = not (lo <= 0 <= hi)
        color = f"C{kinds.index(policy_kind(r['policy']))}"
        dx.errorbar([d], [i], xerr=[[d - lo], [hi - d]], fmt="o", capsize=3, color=color,
                    markerfacecolor=color if excludes else "white")
    dx.axvline(0, color="grey", lw=0.8)
    dx.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=4))
    dx.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:+.3g}"))
    dx.set_yticks(range(len(others)), [r["policy"] for r in others], fontsize=7)
    dx.invert_yaxis()
    dx.margins(y=0.15)
    dx.set_xlabel(f"ΔAUC vs {report.reference}, last 30% (95% paired CI)")
    dx.grid(True, axis="x", alpha=0.3)
    if not others:
        dx.set_axis_off()

    seeds = rows[0]["seeds"]
    fig.suptitle(f"{dataset_title(report.data)} · {report.model} · {seeds} seed(s)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
