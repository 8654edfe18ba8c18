"""The reproduction's results: per-seed evaluations → tables (``results.json``, ``results.md``).

Pure functions, no Ray, no torch. A *run* is one trained model on one seed's split, with
the :func:`mgr.pipelines.evaluate.evaluate` result of its test split. A crnn run yields two table
rows from the same trained model: the time-weighted step average (Model 1 as published)
and the plain mean (the paper's §6.1.1 comparison). Each table row gives the test
accuracy as mean ± standard deviation over seeds, the paper's figure beside it, the
number of test clips, and the 95 % confidence half-width one run on that many clips has.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

__all__ = [
    "PAPER",
    "MODEL_NAMES",
    "run_record",
    "normal_halfwidth",
    "wilson_interval",
    "mean_std",
    "table_rows",
    "scaling_rows",
    "summed_confusions",
    "build_results",
    "render_markdown",
]

FORMAT = "mgr-results/1"

#: the paper's test accuracies: (dataset, split kind) → {(model, average): accuracy}
PAPER: dict[tuple[str, str], dict[tuple[str, str | None], float]] = {
    ("gtzan", "random"): {("crnn", "weighted"): 0.609, ("crnn", "mean"): 0.62, ("cnn", None): 0.740},
    ("fma", "random"): {("cnn", None): 0.773},
    ("fma", "official"): {},
}

#: what to say about the paper's figures for each dataset and split kind
PAPER_NOTES: dict[tuple[str, str], str] = {
    ("gtzan", "random"): "Paper: GTZAN, random 70/20/10 split, one run: Model 1 60.9 % (plain mean 62 %), "
                         "Model 2 74.0 %.",
    ("fma", "random"): "Paper: FMA small, random 70/20/10 split, one run: Model 2 77.3 % "
                       "(Model 1 not reported on FMA).",
    ("fma", "official"): "The paper used a random split; on FMA's official (artist-filtered) split published "
                         "baselines are far lower (about 46 % for an SVM, about 64 % for the best "
                         "self-supervised features), so the paper's 77.3 % is not comparable.",
}

#: readable row names: (model, average) → name
MODEL_NAMES: dict[tuple[str, str | None], str] = {
    ("crnn", "weighted"): "Model 1 (crnn), time-weighted average",
    ("crnn", "mean"): "Model 1 (crnn), plain mean (same model)",
    ("cnn", None): "Model 2 (cnn)",
}

RECIPE_NAMES = {"paper": "paper recipe", "mgr": "mgr defaults"}


def run_record(*, seed: int, model: str, recipe: str, evaluation: dict, model_dir: str, features: str,
               training: dict | None = None, split_seed: int | None = None) -> dict[str, Any]:
    """One run's row of ``results.json`` from its test evaluation.

    Parameters
    ----------
    seed : int
        Seed of the split and of the training.
    model, recipe : str
        ``cnn``/``crnn`` and ``paper``/``mgr``.
    evaluation : dict
        The :func:`mgr.pipelines.evaluate.evaluate` result on the test split.
    model_dir, features : str
        Where the model and the features are.
    split_seed : int, optional
        The seed of the split rule the run trained and was tested with (None: the stored split).
    training : dict, optional
        The :func:`mgr.pipelines.train.train` summary (epochs, best epoch, seconds).
    """
    training = training or {}
    rec: dict[str, Any] = {
        "seed": int(seed),
        "model": model,
        "recipe": recipe,
        "model_dir": model_dir,
        "features": features,
        "split_seed": split_seed,
        "model_id": evaluation.get("model_id"),
        "n_test": int(evaluation["n"]),
        "accuracy": float(evaluation["accuracy"]),
        "genres": list(evaluation["genres"]),
        "confusion": [list(map(int, row)) for row in evaluation["confusion"]],
        "per_genre": evaluation.get("per_genre"),
        "epochs_trained": training.get("epochs_trained"),
        "best_epoch": training.get("best_epoch"),
        "best_val_accuracy": training.get("best_val_accuracy"),
        "train_seconds": training.get("seconds"),
    }
    if model == "crnn":
        rec["average"] = evaluation.get("average", "weighted")
        rec["accuracy_weighted"] = float(evaluation["accuracy_weighted"])
        rec["accuracy_mean"] = float(evaluation["accuracy_mean"])
    return rec


def normal_halfwidth(p: float, n: int, *, z: float = 1.96) -> float:
    """Half-width of the normal-approximation interval of an accuracy ``p`` on ``n`` clips.

    One run on ``n`` test clips measures its accuracy only to about ± this (p = 0.74,
    n = 100 → 0.086).
    """
    if n <= 0:
        return float("nan")
    p = min(max(float(p), 0.0), 1.0)
    return z * math.sqrt(p * (1.0 - p) / n)


def wilson_interval(p: float, n: int, *, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval ``(low, high)`` of an accuracy ``p`` on ``n`` clips."""
    if n <= 0:
        return float("nan"), float("nan")
    p = min(max(float(p), 0.0), 1.0)
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    vals = [float(v) for v in values]
    if not vals:
        return float("nan"), float("nan")
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def _row_keys(model: str) -> list[tuple[str | None, str]]:
    """(average, accuracy field) pairs of a model's table rows."""
    if model == "crnn":
        return [("weighted", "accuracy_weighted"), ("mean", "accuracy_mean")]
    return [(None, "accuracy")]


def table_rows(runs: Iterable[dict], *, dataset: str, split: str) -> list[dict[str, Any]]:
    """The results table: one row per model × averaging × recipe, over seeds.

    Returns
    -------
    list of dict
        ``model``, ``average``, ``recipe``, ``name``, ``seeds``, ``accuracies`` (per seed, in
        seed order), ``mean``, ``std``, ``n_test`` (mean test clips per seed),
        ``ci95_halfwidth`` (normal approximation for one run at ``mean`` on ``n_test``
        clips), ``wilson95`` and ``paper`` (the paper's figure or None).
    """
    runs = sorted(runs, key=lambda r: (r["model"] != "crnn", r["recipe"] != "paper", r["seed"]))
    paper = PAPER.get((dataset, split), {})
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["model"], r["recipe"]), []).append(r)
    rows = []
    for (model, recipe), group in groups.items():
        for average, field in _row_keys(model):
            accs = [float(r[field]) for r in group]
            mean, std = mean_std(accs)
            n_test = sum(r["n_test"] for r in group) / len(group)
            n_round = int(round(n_test))
            low, high = wilson_interval(mean, n_round)
            rows.append({
                "model": model,
                "average": average,
                "recipe": recipe,
                "name": f"{MODEL_NAMES[(model, average)]}, {RECIPE_NAMES.get(recipe, recipe)}",
                "seeds": [r["seed"] for r in group],
                "accuracies": accs,
                "mean": mean,
                "std": std,
                "n_test": n_test,
                "ci95_halfwidth": normal_halfwidth(mean, n_round),
                "wilson95": [low, high],
                "paper": paper.get((model, average)),
            })
    return rows


def scaling_rows(measurements: Iterable[dict]) -> list[dict[str, Any]]:
    """Training throughput per worker count, with the speed-up over the fewest workers.

    ``measurements``: dicts with ``workers``, ``use_gpu``, ``samples``, ``epoch_seconds``
    (summed over the measured epochs) and ``wall_s``; ``samples_per_s`` and ``speedup``
    are added.
    """
    rows = sorted((dict(m) for m in measurements), key=lambda m: m["workers"])
    base = None
    for m in rows:
        m["samples_per_s"] = m["samples"] / m["epoch_seconds"] if m["epoch_seconds"] > 0 else float("nan")
        if base is None:
            base = m
        m["speedup"] = m["samples_per_s"] / base["samples_per_s"] if base["samples_per_s"] else float("nan")
    return rows


def summed_confusions(runs: Iterable[dict]) -> list[dict[str, Any]]:
    """Per model × recipe, the test confusion matrices (rows true) summed over seeds."""
    sums: dict[tuple[str, str], dict] = {}
    for r in sorted(runs, key=lambda r: (r["model"] != "crnn", r["recipe"] != "paper", r["seed"])):
        key = (r["model"], r["recipe"])
        if key not in sums:
            sums[key] = {"model": r["model"], "recipe": r["recipe"], "genres": list(r["genres"]), "seeds": [],
                         "matrix": [[0] * len(r["genres"]) for _ in r["genres"]],
                         "png": f"confusion-{r['model']}-{r['recipe']}.png"}
        entry = sums[key]
        if list(r["genres"]) != entry["genres"]:
            raise ValueError(f"runs of {key} disagree on the genre vocabulary")
        entry["seeds"].append(r["seed"])
        for i, row in enumerate(r["confusion"]):
            for j, v in enumerate(row):
                entry["matrix"][i][j] += int(v)
    return list(sums.values())


def build_results(runs: list[dict], *, dataset: str, split: str, seeds: Sequence[int], settings: dict,
                  scaling: Sequence[dict] = (), figures: Sequence[str] = (), extraction: dict | None = None,
                  ) -> dict[str, Any]:
    """Everything ``results.json`` holds."""
    return {
        "format": FORMAT,
        "dataset": dataset,
        "split": split,
        "seeds": list(seeds),
        "settings": settings,
        "extraction": extraction or {},
        "paper_note": PAPER_NOTES.get((dataset, split), ""),
        "table": table_rows(runs, dataset=dataset, split=split),
        "runs": sorted(runs, key=lambda r: (r["seed"], r["model"] != "crnn", r["recipe"] != "paper")),
        "confusion": summed_confusions(runs),
        "scaling": scaling_rows(scaling),
        "figures": list(figures),
    }


def pct(x: float | None, digits: int = 1) -> str:
    """``0.7403`` → ``"74.0"``; None/NaN → ``"—"``."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{100.0 * x:.{digits}f}"


def _rel(path: str, root: str) -> str:
    """``path`` relative to ``root`` when it lies under it (for links in results.md)."""
    root = root.rstrip("/") + "/"
    return path[len(root):] if path.startswith(root) else path


def render_markdown(results: dict, *, root: str = "") -> str:
    """``results.md``: the table, per-seed rows, confidence note, scaling, figure links."""
    ds = {"gtzan": "GTZAN", "fma": "FMA small"}.get(results["dataset"], results["dataset"])
    seeds = results["seeds"]
    lines = [f"# mgr reproduction: {ds}, {results['split']} split, {len(seeds)} seed(s)", ""]
    s = results["settings"]
    lines.append(f"Seeds {seeds}; {s.get('workers')} worker(s){' on GPU' if s.get('use_gpu') else ' on CPU'}; "
                 f"epochs {s.get('epochs') or 'preset default'}. Each seed draws "
                 + ("a new stratified 70/20/10 split." if results["split"] == "random"
                    else "FMA's official split (seeds only change the training).") + "")
    lines += ["", "## Test accuracy (%)", "",
              "| model | recipe | mean ± std over seeds | per seed | paper | test clips | ±95 % (one run) |",
              "|---|---|---|---|---|---|---|"]
    for r in results["table"]:
        per_seed = ", ".join(pct(a) for a in r["accuracies"])
        name = MODEL_NAMES[(r["model"], r["average"])]
        lines.append(f"| {name} | {RECIPE_NAMES.get(r['recipe'], r['recipe'])} | {pct(r['mean'])} ± {pct(r['std'])} "
                     f"| {per_seed} | {pct(r['paper'])} | {r['n_test']:g} | ±{pct(r['ci95_halfwidth'])} |")
    lines += ["", results.get("paper_note", ""), ""]
    lines += _confidence_note(results)
    lines += ["", "## Runs", "", "| seed | model | recipe | test accuracy | weighted | mean | test clips | epochs "
              "(best) | model dir |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results["runs"]:
        rel = _rel(r["model_dir"], root) if root else r["model_dir"]
        lines.append(f"| {r['seed']} | {r['model']} | {r['recipe']} | {pct(r['accuracy'], 2)} "
                     f"| {pct(r.get('accuracy_weighted'), 2)} | {pct(r.get('accuracy_mean'), 2)} | {r['n_test']} "
                     f"| {r.get('epochs_trained')} ({r.get('best_epoch')}) "
                     f"| [{rel}]({rel}/) ([curves]({rel}/learning_curves.png), "
                     f"[confusion]({rel}/confusion_matrix.png)) |")
    if results.get("confusion"):
        lines += ["", "Confusion matrices on the test splits, summed over seeds: "
                  + ", ".join(f"[{c['model']}/{c['recipe']}]({c['png']})" for c in results["confusion"]) + "."]
    if results["scaling"]:
        lines += ["", "## Training throughput", "",
                  "| workers | device | samples/s | speed-up | samples | epoch seconds | wall s |",
                  "|---|---|---|---|---|---|---|"]
        for m in results["scaling"]:
            lines.append(f"| {m['workers']} | {'GPU' if m.get('use_gpu') else 'CPU'} | {m['samples_per_s']:.1f} "
                         f"| {m['speedup']:.2f}× | {m['samples']} | {m['epoch_seconds']:.2f} "
                         f"| {'—' if m.get('wall_s') is None else format(m['wall_s'], '.1f')} |")
        lines += ["", f"Model {results['scaling'][0].get('model', 'cnn')}/{results['scaling'][0].get('recipe', '')}"
                  f", {results['scaling'][0].get('epochs')} epoch(s) per worker count; samples/s = train clips "
                  "seen / epoch wall time (which includes the val scoring), after the first epoch when there "
                  "are several."]
    if results["figures"]:
        lines += ["", "## Per-step distributions (the paper's Figures 6–7)", ""]
        for f in results["figures"]:
            rel = _rel(f, root) if root else f
            lines.append(f"![{rel}]({rel})")
    return "\n".join(lines).rstrip() + "\n"


def _confidence_note(results: dict) -> list[str]:
    table = results["table"]
    if not table:
        return []
    n = int(round(min(r["n_test"] for r in table)))
    ref = next((r["paper"] for r in table if r["paper"]), None) or 0.74
    hw = normal_halfwidth(ref, n)
    return [f"How precise is one number: with {n} test clips, one run's accuracy near {pct(ref)} % has a 95 % "
            f"interval of about ±{pct(hw)} points (normal approximation; Wilson "
            f"{pct(wilson_interval(ref, n)[0])}–{pct(wilson_interval(ref, n)[1])} %). Differences between "
            "single runs smaller than that are noise; the spread over seeds (± std) also includes the "
            "change of split."]
