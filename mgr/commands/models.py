"""``mgr models list|pull|show``: named models, pinned by sha256, cached for offline use."""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil

__all__ = ["register", "run", "format_card", "job_model"]

EPILOG = """\
examples:
  mgr models list
  mgr models pull paper-gtzan                          # download, verify sha256, import, cache
  mgr models pull paper-gtzan --from weights.h5        # a file fetched elsewhere (no internet)
  mgr label my-music/ labels/ --model paper-gtzan
  mgr models show paper-gtzan                          # its model card

The cache is $MGR_HOME (default ~/.cache/mgr/models). Wherever a command takes a model
directory, a name works too; an existing path of the same name wins."""


def register(sub) -> None:
    p = sub.add_parser(
        "models",
        help="named models: list them, pull one into the local cache, show a model card",
        description="Models mgr knows by name (published weights pinned by sha256). `pull` downloads one "
        "(or takes a local file), verifies its sha256 before writing anything, imports it and caches the "
        "model directory in $MGR_HOME (default ~/.cache/mgr/models); then `--model NAME` works wherever "
        "a model directory does.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    ls = actions.add_parser("list", help="the known models and whether each is in the local cache")
    ls.add_argument("--json", action="store_true", help="one JSON object per model, one per line")
    pl = actions.add_parser("pull", help="download (or --from FILE), verify, import and cache a named model")
    pl.add_argument("name", metavar="NAME", help="registry name (see `mgr models list`)")
    pl.add_argument("--from", dest="source", default=None, metavar="FILE_OR_URL",
                    help="take the file from here instead of its published URL: a local file for machines "
                    "without internet, or an http(s)://, file:// or s3:// URL; its sha256 must match")
    pl.add_argument("--force", action="store_true", help="pull again even when the model is cached")
    sh = actions.add_parser("show", help="the model card of a named model or a model directory")
    sh.add_argument("model", metavar="NAME|DIR", help="registry name or model directory (folder or s3://)")
    sh.add_argument("--json", action="store_true", help="print model.json's card as JSON")
    sh.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint for an s3:// DIR")
    p.set_defaults(func=run, _models_parser=p)


def run(args: argparse.Namespace) -> int:
    if not args.action:
        args._models_parser.print_help()
        return 2
    return {"list": _list, "pull": _pull, "show": _show}[args.action](args)


def _list(args: argparse.Namespace) -> int:
    from mgr.registry import CATALOG, cache_root, cached_dir, is_cached

    for ent in CATALOG.values():
        cached = str(cached_dir(ent.name)) if is_cached(ent.name) else None
        if args.json:
            print(json.dumps({"name": ent.name, "architecture": ent.architecture, "genres": list(ent.genres),
                              "data": ent.data, "published_accuracy": ent.published_accuracy,
                              "published_on": ent.published_on, "licence": ent.licence,
                              "source_url": ent.source_url, "homepage": ent.homepage, "sha256": ent.sha256,
                              "size": ent.size, "cached": cached}, sort_keys=True))
            continue
        print(f"{ent.name}")
        for key, value in (
            ("architecture", ent.architecture),
            ("genres", ", ".join(ent.genres)),
            ("trained on", ent.data),
            ("published accuracy", f"{ent.published_accuracy:.1%} ({ent.published_on})"),
            ("licence", f"{ent.licence} ({ent.licence_url}); the weights are not part of mgr"),
            ("source", ent.source_url),
            ("sha256", f"{ent.sha256} ({ent.size} bytes)"),
            ("cached", cached or f"no: mgr models pull {ent.name}"),
        ):
            print(f"  {key:<19} {value}")
    if not args.json:
        print(f"cache: {cache_root()} ($MGR_HOME)")
    return 0


def _pull(args: argparse.Namespace) -> int:
    from mgr.registry.pull import pull

    res = pull(args.name, source=args.source, force=args.force)
    if res["already"]:
        print(f"{args.name} is already in the cache: {res['path']} (--force pulls it again)")
    else:
        print(f"pulled {args.name}: sha256 {res['sha256']} verified, imported → {res['path']}")
    print(f"  label with it: mgr label CATALOG OUTPUT --model {args.name}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from mgr.models.modeldir import model_card, read_spec
    from mgr.registry import CATALOG, entry, is_cached, resolve_model

    value = args.model
    if "://" not in value and not os.path.exists(value) and value in CATALOG and not is_cached(value):
        ent = entry(value)  # known but not pulled: what the catalog says
        card, where = ent.card(), f"not in the cache (mgr models pull {value})"
    else:
        where = resolve_model(value)
        spec = read_spec(where, endpoint_url=args.endpoint_url)
        card = model_card(spec)
    if args.json:
        print(json.dumps(card, sort_keys=True, default=str))
    else:
        print(format_card(card, title=where if where == value else f"{value}: {where}"))
    return 0


def format_card(card: dict, *, title: str) -> str:
    """The model card as indented text: one section per key (data, metrics, licence, provenance)."""
    lines = [title]

    def emit(value, indent: int) -> None:
        pad = "  " * indent
        for key, val in value.items():
            if isinstance(val, dict):
                if not val:
                    lines.append(f"{pad}{key}: (none)")
                    continue
                lines.append(f"{pad}{key}:")
                emit(val, indent + 1)
            else:
                text = ", ".join(map(str, val)) if isinstance(val, list) else val
                lines.append(f"{pad}{key}: {'(none)' if text is None else text}")

    for section in ("data", "metrics", "licence", "provenance"):
        val = card.get(section)
        lines.append(f"{section}:" if isinstance(val, dict) and val else f"{section}: {val if val else '(none)'}")
        if isinstance(val, dict):
            emit(val, 1)
    return "\n".join(lines)


# ------------------------------------------------------------------ cluster jobs
#: folder of the job's working_dir where a named model travels with a submitted job
JOB_MODELS = ".mgr-job-models"


def job_model(value: str) -> str | None:
    """``mgr submit label --model NAME``: the cached model directory, shipped with the job.

    Returns None when ``value`` is not a registry name to resolve (a URI, an existing
    path, or an unknown name: the caller treats it as a path, as before). For a name, the
    cached directory is copied into ``JOB_MODELS/`` of the project (the job's working_dir,
    uploaded by ``submit``) and the path relative to it is returned, so every worker
    reads the model from its own copy of the working_dir: none downloads anything. The
    copy is removed when this process exits (after the upload).

    Raises
    ------
    RegistryError
        The name is not pulled (the message says the pull command), or the project
        cannot hold the copy (the message says to put the model on s3://).
    """
    from mgr.registry import CATALOG, RegistryError, resolve_model
    from mgr.remote.runtime_env import project_root

    if "://" in value or os.path.exists(value) or value not in CATALOG:
        return None
    cached = resolve_model(value)  # not pulled: the one-line pull hint
    rel = os.path.join(JOB_MODELS, f"{os.getpid()}-{value}")
    dest = project_root() / rel
    try:
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(cached, dest)
    except OSError as exc:
        raise RegistryError(f"cannot ship model {value!r} with the job ({exc}); copy {cached} to storage the "
                            f"cluster reads (e.g. s3://BUCKET/models/{value}) and pass that to --model") from None
    atexit.register(_remove_shipped, dest)
    return rel


def _remove_shipped(dest) -> None:
    shutil.rmtree(dest, ignore_errors=True)
    try:
        dest.parent.rmdir()  # only when no other submit's copy is left in it
    except OSError:
        pass
