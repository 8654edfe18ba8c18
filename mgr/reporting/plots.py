"""Report plots (matplotlib, Agg backend) as PNG bytes: learning curves, the confusion matrix,
calibration (reliability and coverage), bars and per-genre confidence histograms."""

from __future__ import annotations

import io
from typing import Sequence

__all__ = ["figure", "png", "learning_curves_png", "calibration_png", "bars_png", "confidence_png",
           "confusion_matrix_png"]


def figure():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def png(fig, plt) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def learning_curves_png(history: Sequence[dict], *, title: str = "") -> bytes:
    """PNG of train/val loss and train/val accuracy per epoch (``history``: metrics.jsonl rows).

    ``val_loss`` (the mean cross-entropy of the val tracks' distributions) is drawn when the
    rows carry it; older model directories have only the training loss.
    """
    plt = figure()
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [h["loss"] for h in history], marker=".", label="train loss (crops)")
    val_loss = [(h["epoch"], h["val_loss"]) for h in history if h.get("val_loss") is not None]
    if val_loss:
        ax1.plot(*zip(*val_loss), marker=".", label="val loss (tracks)")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("cross-entropy")
    ax1.legend()
    ax2.plot(epochs, [h["accuracy"] for h in history], marker=".", label="train accuracy (crops)")
    ax2.plot(epochs, [h.get("val_accuracy") for h in history], marker=".", label="val accuracy (tracks)")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("accuracy")
    ax2.set_ylim(0, 1)
    ax2.legend()
    from matplotlib.ticker import MaxNLocator

    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    return png(fig, plt)


def calibration_png(calibration: dict, *, title: str = "") -> bytes:
    """PNG of the reliability diagram before/after calibration and the accuracy-vs-coverage curve.

    Parameters
    ----------
    calibration : dict
        report.json ``calibration``: ``temperature``, ``ece_before``, ``ece_after``,
        ``reliability_before``/``reliability_after`` (lists of bins with ``lo``, ``hi``,
        ``count``, ``confidence``, ``accuracy``) and ``coverage`` (rows of ``threshold``,
        ``coverage``, ``accuracy``, at the fitted temperature).
    """
    plt = figure()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="perfectly calibrated")
    t = calibration.get("temperature", 1.0)
    for key, label in (("reliability_before", f"T = 1 (ECE {calibration.get('ece_before', float('nan')):.3f})"),
                       ("reliability_after", f"T = {t:.3g} (ECE {calibration.get('ece_after', float('nan')):.3f})")):
        bins = [b for b in calibration.get(key) or [] if b.get("count")]
        if bins:
            ax1.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", label=label)
    ax1.set_xlim(0, 1)
    ax1.set_ylim(0, 1)
    ax1.set_xlabel("confidence (mean of the bin)")
    ax1.set_ylabel("accuracy")
    ax1.set_title("reliability", fontsize=10)
    ax1.legend(fontsize=8, loc="upper left")
    rows = calibration.get("coverage") or []
    th = [r["threshold"] for r in rows]
    ax2.plot(th, [r["coverage"] for r in rows], marker=".", label="tracks kept (coverage)")
    acc = [(r["threshold"], r["accuracy"]) for r in rows if r.get("accuracy") is not None]
    if acc:
        ax2.plot(*zip(*acc), marker=".", label="accuracy of the kept")
    ax2.set_xlim(0, 1)
    ax2.set_ylim(0, 1.02)
    ax2.set_xlabel("--min-confidence (calibrated)")
    ax2.set_title("keep only tracks above a confidence", fontsize=10)
    ax2.legend(fontsize=8, loc="lower left")
    if title:
        fig.suptitle(title)
    return png(fig, plt)


def bars_png(names: Sequence[str], values: Sequence[float], *, xlabel: str, title: str = "",
             highlight: str | None = None) -> bytes:
    """PNG of horizontal bars, largest on top (``highlight``: a name drawn in another colour)."""
    plt = figure()
    pairs = sorted(zip(names, values), key=lambda p: p[1])
    fig, ax = plt.subplots(figsize=(7, 0.8 + 0.32 * max(1, len(pairs))))
    colors = ["#d9822b" if n == highlight else "#3b75af" for n, _ in pairs]
    ax.barh([n for n, _ in pairs], [v for _, v in pairs], color=colors)
    top = max((v for _, v in pairs), default=0) or 1
    for i, (_, v) in enumerate(pairs):
        ax.text(v + top * 0.01, i, f"{v:,.4g}", va="center", fontsize=8)
    ax.set_xlim(0, top * 1.15)
    ax.set_xlabel(xlabel)
    if title:
        ax.set_title(title, fontsize=10)
    return png(fig, plt)


def confidence_png(hists: dict, *, title: str = "") -> bytes:
    """PNG of one confidence histogram per genre (``hists``: genre → counts of equal bins on [0, 1])."""
    import numpy as np

    plt = figure()
    items = sorted(hists.items(), key=lambda kv: -sum(kv[1]))
    cols = 3 if len(items) > 4 else max(1, len(items))
    rows = max(1, -(-len(items) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for ax, (genre, counts) in zip(axes.flat, items):
        counts = np.asarray(counts, dtype=float)
        edges = np.linspace(0, 1, len(counts) + 1)
        ax.set_visible(True)
        ax.bar(edges[:-1], counts, width=edges[1] - edges[0], align="edge", color="#3b75af")
        ax.set_xlim(0, 1)
        ax.set_title(f"{genre} ({int(counts.sum()):,})", fontsize=9)
        ax.tick_params(labelsize=7)
    fig.supxlabel("confidence", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return png(fig, plt)


def confusion_matrix_png(confusion: Sequence[Sequence[int]], genres: Sequence[str], *, title: str = "") -> bytes:
    """PNG of a confusion matrix (rows true, columns predicted) with counts in the cells."""
    import numpy as np

    plt = figure()
    conf = np.asarray(confusion)
    k = len(genres)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * k, 0.8 + 0.6 * k))
    ax.imshow(conf, cmap="Blues")
    ax.set_xticks(range(k), labels=genres, rotation=45, ha="right")
    ax.set_yticks(range(k), labels=genres)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = conf.max() if conf.size else 0
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(conf[i, j]), ha="center", va="center",
                    color="white" if top and conf[i, j] > top / 2 else "black", fontsize=8)
    if title:
        ax.set_title(title)
    return png(fig, plt)
