"""The labeling report: per-block aggregates of a labels dataset, their merge, and the page.

A labels OUTPUT of any size is summarised by :func:`block_aggregate` on each block (a
few hundred bytes of JSON whatever the block's rows: counts, sums, fixed histograms, a
few error examples and the block's ``top_n`` least confident tracks) and
:func:`merge_aggregates` of those; :func:`render_labels_report` turns the merged aggregate
(plus the run's ``_SUCCESS.json``) into ``index.html``, its PNG charts and ``review.csv``.
Pure pyarrow/numpy/matplotlib: the Ray Data pass lives in :mod:`mgr.pipelines.report`.
"""

from __future__ import annotations

import csv
import io
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mgr.datasets.labelset import error_class
from mgr.reporting import html, plots

__all__ = ["COLUMNS", "CONF_BINS", "EXAMPLES", "MAX_CLASSES", "UNKNOWN", "REVIEW_COLUMNS", "error_class", "empty_aggregate",
           "block_aggregate", "merge_aggregates", "review_csv", "render_labels_report"]

#: the labels columns the report reads (never ``probs``, ``segments`` or ``steps``)
COLUMNS = ("uri", "track_id", "genre", "confidence", "top_genres", "top_probs", "duration_s", "error")
#: confidence histogram bins on [0, 1]
CONF_BINS = 20
#: error examples kept per error class
EXAMPLES = 3
#: error classes kept (the rarest beyond these are counted under "other")
MAX_CLASSES = 40
#: ``genre`` of a track below ``--min-confidence`` (mgr.datasets.labelset.UNKNOWN)
UNKNOWN = "unknown"
REVIEW_COLUMNS = ("confidence", "uri", "track_id", "genre", "top_genres", "top_probs", "duration_s")

def empty_aggregate() -> dict[str, Any]:
    """The aggregate of no rows."""
    return {"rows": 0, "ok": 0, "errors": 0, "unknown": 0, "seconds": 0.0, "genres": {}, "confidence": {},
            "error_classes": {}, "lowest": []}


def block_aggregate(table: pa.Table, *, top_n: int = 100) -> dict[str, Any]:
    """Aggregate of one block of labels rows (needs the :data:`COLUMNS`).

    Returns
    -------
    dict
        ``rows``, ``ok``, ``errors``, ``unknown`` (tracks labelled ``unknown``), ``seconds``
        (audio of the labelled tracks), ``genres`` ({genre: {"tracks", "seconds"}}, by the
        ``genre`` column), ``confidence`` ({the model's top genre: [CONF_BINS] counts}),
        ``error_classes`` ({class: {"count", "examples": [[uri, error], ...]}}) and
        ``lowest`` (the ``top_n`` least confident labelled tracks as rows of
        :data:`REVIEW_COLUMNS`, ascending).
    """
    agg = empty_aggregate()
    n = table.num_rows
    agg["rows"] = n
    if n == 0:
        return agg
    err = table.column("error")
    failed = pc.is_valid(err)
    ok = table.filter(pc.invert(failed))
    bad = table.filter(failed).select(["uri", "error"])
    agg["ok"], agg["errors"] = ok.num_rows, bad.num_rows
    for uri, message in zip(bad.column("uri").to_pylist(), bad.column("error").to_pylist()):
        entry = agg["error_classes"].setdefault(error_class(message), {"count": 0, "examples": []})
        entry["count"] += 1
        if len(entry["examples"]) < EXAMPLES:
            entry["examples"].append([uri, message])
    _cap_classes(agg["error_classes"])
    if ok.num_rows == 0:
        return agg
    dur = pc.fill_null(ok.column("duration_s"), 0.0)
    agg["seconds"] = float(pc.sum(dur).as_py() or 0.0)
    # one thread: Acero's thread pool inside a Ray worker once failed ("thread index 10 is out of range")
    by_genre = pa.table({"genre": pc.fill_null(ok.column("genre"), UNKNOWN), "d": dur})
    by_genre = by_genre.group_by("genre", use_threads=False).aggregate([("d", "sum"), ("d", "count")])
    for g, s, c in zip(*(by_genre.column(k).to_pylist() for k in ("genre", "d_sum", "d_count"))):
        agg["genres"][g] = {"tracks": int(c), "seconds": float(s or 0.0)}
    agg["unknown"] = agg["genres"].get(UNKNOWN, {}).get("tracks", 0)
    conf = pc.fill_null(ok.column("confidence"), 0.0).to_numpy(zero_copy_only=False).astype(np.float64)
    top = pc.fill_null(pc.list_element(ok.column("top_genres"), 0), UNKNOWN).to_numpy(zero_copy_only=False)
    bins = np.clip((conf * CONF_BINS).astype(np.int64), 0, CONF_BINS - 1)
    for g in np.unique(top):
        agg["confidence"][str(g)] = np.bincount(bins[top == g], minlength=CONF_BINS).tolist()
    k = min(int(top_n), ok.num_rows)
    if k > 0:
        idx = np.argsort(conf, kind="stable")[:k]
        low = ok.select(list(REVIEW_COLUMNS)).take(pa.array(idx))
        agg["lowest"] = [[r[c] for c in REVIEW_COLUMNS] for r in low.to_pylist()]
    return agg


def _cap_classes(classes: dict) -> None:
    """Fold the rarest error classes into ``other`` so that an aggregate stays small."""
    if len(classes) <= MAX_CLASSES:
        return
    keep = sorted((c for c in classes if c != "other"), key=lambda c: -classes[c]["count"])[: MAX_CLASSES - 1]
    other = classes.get("other", {"count": 0, "examples": []})
    for c in [c for c in classes if c not in keep and c != "other"]:
        other["count"] += classes[c]["count"]
        other["examples"] = (other["examples"] + classes[c]["examples"])[:EXAMPLES]
        del classes[c]
    classes["other"] = other


def merge_aggregates(a: dict[str, Any], b: dict[str, Any], *, top_n: int = 100) -> dict[str, Any]:
    """The aggregate of both sets of rows (``a`` may be changed and is returned)."""
    for key in ("rows", "ok", "errors", "unknown", "seconds"):
        a[key] += b[key]
    for g, v in b["genres"].items():
        mine = a["genres"].setdefault(g, {"tracks": 0, "seconds": 0.0})
        mine["tracks"] += v["tracks"]
        mine["seconds"] += v["seconds"]
    for g, counts in b["confidence"].items():
        mine = a["confidence"].get(g)
        a["confidence"][g] = counts if mine is None else [x + y for x, y in zip(mine, counts)]
    for cls, v in b["error_classes"].items():
        mine = a["error_classes"].setdefault(cls, {"count": 0, "examples": []})
        mine["count"] += v["count"]
        mine["examples"] = (mine["examples"] + v["examples"])[:EXAMPLES]
    _cap_classes(a["error_classes"])
    a["lowest"] = sorted(a["lowest"] + b["lowest"], key=lambda r: (r[0], r[1]))[: int(top_n)]
    return a


def review_csv(lowest: Sequence[Sequence[Any]]) -> bytes:
    """``review.csv``: the least confident tracks, one per line, least confident first."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(REVIEW_COLUMNS)
    for row in lowest:
        out = []
        for c, v in zip(REVIEW_COLUMNS, row):
            if isinstance(v, list):
                v = "|".join(f"{x:.4f}" if isinstance(x, float) else str(x) for x in v)
            elif isinstance(v, float):
                v = f"{v:.4f}" if c == "confidence" else f"{v:.2f}"
            out.append("" if v is None else v)
        w.writerow(out)
    return buf.getvalue().encode()


def _throughput(marker: dict | None) -> tuple[list[tuple[str, Any]], str]:
    if not marker:
        return [], ("no _SUCCESS.json: the run has not finished (or was interrupted); re-run the same "
                    "mgr label command to finish it")
    run = marker.get("run") or {}
    items = [(k, run.get(key)) for k, key in (("seconds (last run)", "seconds"), ("files/s", "files_per_s"),
                                               ("audio minutes/s", "audio_minutes_per_s"),
                                               ("files labelled (last run)", "files"))
             if run.get(key) is not None]
    note = f"finished {marker.get('finished', '?')}; model {marker.get('model_id', '?')}"
    if marker.get("min_confidence"):
        note += f"; --min-confidence {marker['min_confidence']}"
    return items, note


def render_labels_report(agg: dict[str, Any], *, source: str, marker: dict | None = None,
                         review_name: str = "review.csv") -> dict[str, bytes]:
    """The report's files: ``index.html``, its PNG charts and ``review.csv``.

    Parameters
    ----------
    agg : dict
        A merged :func:`block_aggregate` of the whole labels dataset.
    source : str
        Where the labels are (shown on the page).
    marker : dict, optional
        The dataset's ``_SUCCESS.json`` (throughput, model id, when it finished).

    Returns
    -------
    dict
        File name → bytes; the page references only the PNG files of this dict and
        ``review_name``.
    """
    files: dict[str, bytes] = {}
    sections = []
    hours = agg["seconds"] / 3600.0
    unknown_share = agg["unknown"] / agg["ok"] if agg["ok"] else 0.0
    sections.append(html.section("Summary", html.stats([
        ("tracks", agg["rows"]), ("labelled", agg["ok"]), ("failed", agg["errors"]),
        ("hours of audio", round(hours, 2)), ("share unknown", f"{100 * unknown_share:.1f} %"),
    ])))
    genres = agg["genres"]
    if genres:
        names = list(genres)
        files["genres_tracks.png"] = plots.bars_png(names, [genres[g]["tracks"] for g in names], xlabel="tracks",
                                                    title="genres by track count", highlight=UNKNOWN)
        files["genres_hours.png"] = plots.bars_png(names, [genres[g]["seconds"] / 3600 for g in names],
                                                   xlabel="hours", title="genres by hours of audio",
                                                   highlight=UNKNOWN)
        rows = sorted(((g, v["tracks"], f"{100 * v['tracks'] / agg['ok']:.1f} %", v["seconds"] / 3600)
                       for g, v in genres.items()), key=lambda r: -r[1])
        sections.append(html.section(
            "Genres", html.img("genres_tracks.png", "genres by track count"),
            html.img("genres_hours.png", "genres by hours"),
            html.table(["genre", "tracks", "share", "hours"], rows, numeric=(1, 3)),
            note=f"'{UNKNOWN}': tracks whose confidence is below --min-confidence "
                 f"({agg['unknown']:,} of {agg['ok']:,}, {100 * unknown_share:.1f} %)."))
    if agg["confidence"]:
        files["confidence.png"] = plots.confidence_png(agg["confidence"], title="confidence of the model's top genre")
        sections.append(html.section(
            "Confidence per genre", html.img("confidence.png", "confidence histogram per genre"),
            note="Histogram of each track's top probability, grouped by the genre the model chose "
                 "(tracks labelled unknown included under their top genre). With a calibrated model "
                 "(model.json temperature), a confidence of p means about p of such tracks are right."))
    if agg["lowest"]:
        shown = agg["lowest"][:15]
        sections.append(html.section(
            "Tracks to review",
            html.table(["confidence", "uri", "genre", "top genres"],
                       [(r[0], r[1], r[3], ", ".join(f"{g} {p:.2f}" for g, p in zip(r[4] or [], r[5] or [])))
                        for r in shown], numeric=(0,)),
            f'<p class="note">All {len(agg["lowest"]):,} least confident tracks: '
            f'<a href="{html.esc(review_name)}">{html.esc(review_name)}</a>.</p>',
            note="The least confident labelled tracks, least confident first."))
    classes = agg["error_classes"]
    if classes:
        names = sorted(classes, key=lambda c: -classes[c]["count"])
        files["errors.png"] = plots.bars_png(names, [classes[c]["count"] for c in names], xlabel="files",
                                             title="files that could not be labelled, by cause")
        rows = [(c, classes[c]["count"], "; ".join(f"{u}: {e}" for u, e in classes[c]["examples"])) for c in names]
        sections.append(html.section(
            "Errors", html.img("errors.png", "error classes"),
            html.table(["cause", "files", "examples"], rows, numeric=(1,)),
            note="Files whose 'error' column is set. Causes starting with 'storage:' may pass on a "
                 "retry: mgr label ... --retry-errors."))
    else:
        sections.append(html.section("Errors", '<p class="note">No file failed.</p>'))
    items, note = _throughput(marker)
    sections.append(html.section("Throughput", html.stats(items) if items else "", note=note))
    files["index.html"] = html.page("mgr labeling report", source, sections).encode()
    files[review_name] = review_csv(agg["lowest"])
    return files
