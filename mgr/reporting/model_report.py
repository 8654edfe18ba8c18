"""A model directory's ``report.html``: learning curves, confusion matrix, per-genre F1, calibration.

:func:`write_model_report` reads ``model.json``, ``report.json`` and ``metrics.jsonl`` of a
model directory and writes ``report.html`` beside them with the PNGs it shows
(``learning_curves.png``, ``confusion_matrix.png``, ``per_genre_f1.png``,
``calibration.png``), each drawn only from what the directory holds.
"""

from __future__ import annotations

import json
from typing import Any

from mgr.io.location import Location
from mgr.reporting import html, plots

__all__ = ["render_model_report", "write_model_report"]


def _summary(spec: dict, report: dict) -> str:
    metrics = spec.get("metrics") or {}
    items = [("test accuracy", report.get("accuracy", metrics.get("test_accuracy"))),
             ("best val accuracy", metrics.get("best_val_accuracy", report.get("val_accuracy"))),
             ("best epoch", metrics.get("best_epoch", report.get("best_epoch"))),
             ("temperature", spec.get("temperature", 1.0))]
    cal = report.get("calibration") or {}
    if cal:
        items.append(("ECE (calibrated)", cal.get("ece_after")))
    return html.stats([(k, v) for k, v in items if v is not None])


def _calibration_section(cal: dict) -> str:
    rows = [(r["threshold"], r.get("kept"), f"{100 * r['coverage']:.1f} %",
             None if r.get("accuracy") is None else f"{100 * r['accuracy']:.1f} %")
            for r in cal.get("coverage") or []]
    hints = []
    for target in (0.8, 0.9, 0.95):
        hit = next((r for r in cal.get("coverage") or []
                    if r.get("accuracy") is not None and r["accuracy"] >= target), None)
        if hit:
            hints.append(f"accuracy ≥ {target:.0%}: --min-confidence {hit['threshold']:g} keeps "
                         f"{100 * hit['coverage']:.1f} % of the tracks")
    note = (f"Temperature T = {cal.get('temperature', 1.0):.3g} fitted on the val split (p ← softmax(log p / T)); "
            f"expected calibration error on the {cal.get('split', 'test')} split "
            f"{cal.get('ece_before', float('nan')):.3f} before, {cal.get('ece_after', float('nan')):.3f} after. "
            "The table: when mgr label keeps only tracks whose calibrated confidence is at least the "
            "threshold (--min-confidence; the others are labelled 'unknown'), how many it keeps and how "
            "accurate they are.")
    parts = [html.img("calibration.png", "reliability diagram and accuracy vs coverage")]
    if hints:
        parts.append("<p class=\"note\">" + html.esc("; ".join(hints)) + ".</p>")
    parts.append(html.table(["--min-confidence", "tracks kept", "coverage", "accuracy of the kept"], rows,
                            numeric=(0, 1)))
    return html.section("Calibration and confidence thresholds", *parts, note=note)


def render_model_report(spec: dict, report: dict | None, history: list[dict] | None) -> dict[str, bytes]:
    """The files of a model's report: ``report.html`` and the PNGs it references.

    Parameters
    ----------
    spec : dict
        ``model.json``.
    report : dict, optional
        ``report.json`` (test scores, ``per_genre``, ``confusion``, ``calibration``).
    history : list of dict, optional
        ``metrics.jsonl`` rows (``epoch``, ``loss``, ``accuracy``, ``val_accuracy``, ``val_loss``).
    """
    report = report or {}
    files: dict[str, bytes] = {}
    name = spec.get("name", "model")
    title = f"{spec.get('architecture', '?')} {name}"
    sections = [html.section("Summary", _summary(spec, report))]
    if history:
        files["learning_curves.png"] = plots.learning_curves_png(history, title=title)
        note = "Training loss and accuracy are over training crops; validation over whole val tracks."
        if not any(h.get("val_loss") is not None for h in history):
            note += " (This model's metrics.jsonl has no val_loss.)"
        sections.append(html.section("Learning curves", html.img("learning_curves.png", "learning curves"),
                                     note=note))
    genres = report.get("genres") or spec.get("genres") or []
    if report.get("confusion") and genres:
        files["confusion_matrix.png"] = plots.confusion_matrix_png(report["confusion"], genres,
                                                                   title=f"{title} {report.get('split', 'test')}")
        sections.append(html.section("Confusion matrix", html.img("confusion_matrix.png", "confusion matrix"),
                                     note=f"Rows: true genre; columns: predicted ({report.get('split', 'test')} split)."))
    per = report.get("per_genre") or {}
    if per:
        names = [g for g in genres if g in per] or list(per)
        files["per_genre_f1.png"] = plots.bars_png(names, [per[g]["f1"] for g in names], xlabel="F1",
                                                   title="F1 per genre")
        rows = [(g, per[g].get("precision"), per[g].get("recall"), per[g].get("f1"), per[g].get("support"))
                for g in names]
        sections.append(html.section("Per genre", html.img("per_genre_f1.png", "F1 per genre"),
                                     html.table(["genre", "precision", "recall", "F1", "support"], rows,
                                                numeric=(1, 2, 3, 4))))
    cal = report.get("calibration")
    if cal:
        files["calibration.png"] = plots.calibration_png(cal, title=title)
        sections.append(_calibration_section(cal))
    card = spec.get("card") or {}
    prov = spec.get("provenance") or {}
    about = [("model id", report.get("model_id")), ("genres", ", ".join(spec.get("genres") or [])),
             ("window", f"{spec.get('window_frames')} frames"), ("created", spec.get("created")),
             ("licence", (card.get("licence") or {}).get("name")), ("features", prov.get("features")),
             ("calibrated from", prov.get("calibrated_from"))]
    sections.append(html.section("About", html.table(["", ""], [(k, v) for k, v in about if v])))
    files["report.html"] = html.page(f"mgr model report: {name}", title, sections).encode()
    return files


def write_model_report(model: Location | str, *, endpoint_url: str | None = None) -> dict[str, Any]:
    """Write ``report.html`` (and its PNGs) into a model directory from the files it holds.

    Returns
    -------
    dict
        ``report`` (the page's uri) and ``files`` (names written).
    """
    loc = Location.of(model, endpoint_url=endpoint_url)
    spec = loc.join("model.json").read_json()
    rep_loc, met_loc = loc.join("report.json"), loc.join("metrics.jsonl")
    report = rep_loc.read_json() if rep_loc.exists() else None
    history = None
    if met_loc.exists():
        history = [json.loads(line) for line in met_loc.read_bytes().decode().splitlines() if line.strip()]
    files = render_model_report(spec, report, history)
    for name, data in sorted(files.items(), key=lambda kv: kv[0] == "report.html"):  # the page last
        loc.join(name).write_bytes(data)
    return {"report": loc.join("report.html").uri, "files": sorted(files)}
