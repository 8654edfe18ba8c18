"""``mgr label CATALOG OUTPUT --model MODEL_DIR``: genre labels of a whole catalog, as Parquet."""

from __future__ import annotations

import argparse
import json

from mgr.commands import add_ray_options, add_storage_options

READ_HINT = """\
read the labels (one line):
  df = pandas.read_parquet(OUTPUT)          # or: pyarrow.parquet.read_table(OUTPUT)
one row per catalog file: uri, track_id, genre, confidence, top_genres, top_probs,
probs (in vocabulary order), segments (start_s, end_s, genre, confidence per window),
duration_s, decoded_s, model_id, error, steps (crnn --per-step), manifest columns.
vocabulary: json.loads(pyarrow.parquet.read_schema(PART_FILE).metadata[b"mgr.genres"]);
OUTPUT/_SUCCESS.json marks a finished run (counts, model id, vocabulary, windows)."""


def register(sub) -> None:
    p = sub.add_parser(
        "label",
        help="label every audio file of a catalog with a trained model (Parquet out)",
        description="Decode every audio file under CATALOG (local folder or s3://bucket/prefix), cut it into "
        "windows of the model's input length, run them through the model in an actor pool and write one "
        "row per file to the labels dataset OUTPUT. Re-running the same command resumes: only files not "
        "yet in OUTPUT are labeled. Bad files get an `error` row and the job goes on.",
        epilog=READ_HINT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("catalog", metavar="CATALOG",
                   help="folder or s3:// prefix of audio files, or manifest:FILE (CSV/Parquet with a uri column, "
                   "optional track_id and columns to carry through)")
    p.add_argument("output", metavar="OUTPUT", help="folder or s3:// prefix of the labels dataset")
    p.add_argument("--model", required=True, metavar="MODEL_DIR",
                   help="model directory (mgr train / import-keras) or a pulled model's name (mgr models list)")
    p.add_argument("--window-seconds", type=float, default=None,
                   help="window length (default: the model's input length, 30 s for the paper preset)")
    p.add_argument("--hop-seconds", type=float, default=None, help="hop between windows (default: half a window)")
    p.add_argument("--top-k", type=int, default=3, help="genres kept in top_genres/top_probs (default: 3)")
    p.add_argument("--batch-size", type=int, default=64, help="windows per forward pass (default: 64)")
    p.add_argument("--actors", default=None, metavar="MIN,MAX",
                   help="size range of the model actor pool (default: one per GPU, or one per 8 CPUs)")
    p.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPUs per model actor (0: run on CPU)")
    p.add_argument("--cpus-per-actor", type=float, default=None,
                   help="CPUs reserved per model actor (default: 1 with GPUs or on >= 8 CPUs, else 0)")
    p.add_argument("--per-step", action="store_true",
                   help="crnn only: write the per-step distributions of each window (`steps` column)")
    p.add_argument("--max-windows", type=int, default=None, metavar="N",
                   help="label at most N windows per track, spread evenly; only their excerpts are decoded")
    p.add_argument("--min-confidence", type=float, default=0.0, metavar="P",
                   help="tracks whose (calibrated) top probability is below P get genre 'unknown' (top_genres "
                   "kept); choose P from the accuracy-vs-coverage table of the model's report.html "
                   "(report.json calibration.coverage; `mgr calibrate` makes one for any model)")
    p.add_argument("--target-accuracy", type=float, default=None, metavar="A",
                   help="set --min-confidence to the lowest threshold whose kept tracks reach accuracy A "
                   "in the model's accuracy-vs-coverage table")
    p.add_argument("--retry-errors", action="store_true",
                   help="label again the files whose error was a storage/network one ('storage: ...')")
    p.add_argument("--overwrite", action="store_true", help="clear OUTPUT (even another model's labels) and relabel")
    p.add_argument("--max-seconds", type=float, default=3 * 3600.0,
                   help="files longer than this get an error row instead of labels (default: 3 h)")
    p.add_argument("--files-per-task", type=int, default=4, help="files decoded per Ray task (default: 4)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    add_ray_options(p)
    add_storage_options(p)
    p.set_defaults(func=run)


def config(args: argparse.Namespace):
    """The :class:`~mgr.pipelines.catalog_config.LabelConfig` of the command line."""
    from mgr.pipelines.calibrate import min_confidence_for
    from mgr.pipelines.catalog_config import LabelConfig
    from mgr.registry import resolve_model

    model_dir = resolve_model(args.model)
    return LabelConfig(
        catalog=args.catalog,
        output=args.output,
        model_dir=model_dir,
        window_seconds=args.window_seconds,
        hop_seconds=args.hop_seconds,
        top_k=args.top_k,
        batch_size=args.batch_size,
        actors=args.actors,
        gpus_per_actor=args.gpus_per_actor,
        cpus_per_actor=args.cpus_per_actor,
        per_step=args.per_step,
        max_windows=args.max_windows,
        min_confidence=args.min_confidence if args.target_accuracy is None else
        min_confidence_for(model_dir, args.target_accuracy, endpoint_url=args.endpoint_url),
        retry_errors=args.retry_errors,
        overwrite=args.overwrite,
        max_seconds=args.max_seconds,
        files_per_task=args.files_per_task,
        address=args.address,
        num_cpus=args.num_cpus,
        endpoint_url=args.endpoint_url,
    )


def run(args: argparse.Namespace) -> int:
    from mgr.pipelines.label import label_catalog

    summary = label_catalog(config(args), log=(lambda _line: None) if args.json else print,
                            progress=not args.json)
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(format_summary(summary))
    return 0


def format_summary(s: dict) -> str:
    """The console summary: files, errors, genre histogram, throughput."""
    run, c = s["run"], s["counts"]
    lines = [
        f"labeled {run['files']} file(s) with {s['model_id']} in {run['seconds']:.1f} s "
        f"({run['files_per_s'] or 0:.2f} files/s, {run['audio_minutes_per_s'] or 0:.2f} audio-min/s; "
        f"{run['files_skipped_already_done']} already done)",
        f"errors this run: {run['errors']}" + "".join(f"\n  {e}" for e in run["error_examples"]),
    ]
    if run.get("error_kinds"):
        lines.append("error classes: " + ", ".join(f"{k} × {n}" for k, n in run["error_kinds"].items()))
    if run.get("retried"):
        lines.append(f"retried {run['retried']} storage error(s); still broken: {run['still_broken']}"
                     + "".join(f"\n  {u}" for u in run["still_broken_examples"]))
    if run.get("audio_minutes_skipped"):
        lines.append(f"audio decoded: {run['audio_minutes_decoded']:.1f} min, skipped: "
                     f"{run['audio_minutes_skipped']:.1f} min (--max-windows {s['max_windows']})")
    if run.get("unknown"):
        lines.append(f"unknown (top probability < {s['min_confidence']}): {run['unknown']}")
    if run["genres"]:
        total = max(1, sum(run["genres"].values()))
        width = max(len(g) for g in run["genres"])
        for genre, n in run["genres"].items():
            lines.append(f"  {genre:<{width}} {n:>7} {'#' * max(1, round(30 * n / total))}")
    lines.append(f"{s['output']}: {c['files']} file(s) labeled of {c['catalog_files']} in the catalog, "
                 f"{c['errors']} error row(s)" + ("" if s["complete"] else f", {c['missing']} missing"))
    if s.get("report"):
        lines.append(f"report: {s['report']} (review.csv beside it: the least confident tracks)")
    return "\n".join(lines)
