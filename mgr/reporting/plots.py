"""Training plots (matplotlib, Agg backend): learning curves and the confusion matrix."""

from __future__ import annotations

import io
from typing import Sequence

__all__ = ["figure", "png", "learning_curves_png", "confusion_matrix_png"]


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
    """PNG of loss and train/val accuracy per epoch (``history``: metrics.jsonl rows)."""
    plt = figure()
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [h["loss"] for h in history], marker=".", label="train loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax2.plot(epochs, [h["accuracy"] for h in history], marker=".", label="train accuracy (crops)")
    ax2.plot(epochs, [h["val_accuracy"] for h in history], marker=".", label="val accuracy (tracks)")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("accuracy")
    ax2.set_ylim(0, 1)
    ax2.legend()
    if title:
        fig.suptitle(title)
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
