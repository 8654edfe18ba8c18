"""``mgr models pull``: fetch a named model's file, verify it, import it into the cache.

Order of work: the file is read into memory (over HTTP(S), from a local file or an
``s3://`` object) and its sha256 compared with the catalog's **before anything is
written**; only then is a temporary folder made beside the cached entry, the file imported
there (:func:`mgr.interop.keras.importer.import_keras`, which also writes the model card),
and the finished model directory renamed into place. A failure at any step leaves no
entry and no temporary folder behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from mgr import __version__
from mgr.errors import MgrError
from mgr.registry.cache import cache_root, cached_dir, is_cached
from mgr.registry.catalog import ModelEntry, RegistryError, entry

__all__ = ["fetch", "verify", "build_model_dir", "pull"]

_TIMEOUT_S = 60.0
_CHUNK = 1 << 20


def _offline_hint(name: str) -> str:
    return f"without internet, fetch the file elsewhere and run `mgr models pull {name} --from FILE`"


def fetch(source: str, *, ent: ModelEntry, timeout: float = _TIMEOUT_S) -> bytes:
    """The bytes of ``source`` (``http(s)://`` URL, local path, ``file://`` or ``s3://``).

    At most ``ent.size + 1`` bytes are read (a larger file cannot be the pinned one).

    Raises
    ------
    RegistryError
        The source cannot be read (one line, with the offline alternative).
    """
    limit = ent.size + 1
    if source.startswith(("http://", "https://")):
        request = urllib.request.Request(source, headers={"User-Agent": f"mgr/{__version__}"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 - http(s) only
                chunks, got = [], 0
                while got < limit:
                    block = resp.read(min(_CHUNK, limit - got))
                    if not block:
                        break
                    chunks.append(block)
                    got += len(block)
                return b"".join(chunks)
        except urllib.error.HTTPError as exc:
            raise RegistryError(f"cannot download {source}: HTTP {exc.code} {exc.reason}; "
                                f"{_offline_hint(ent.name)}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RegistryError(f"cannot download {source}: {reason}; {_offline_hint(ent.name)}") from None
    if "://" in source and not source.startswith("file://"):
        from mgr.io.location import Location

        try:
            return Location(source).read_bytes()[:limit]
        except MgrError as exc:
            raise RegistryError(f"cannot read {source}: {exc}") from None
    path = Path(source[len("file://"):] if source.startswith("file://") else source).expanduser()
    try:
        with open(path, "rb") as fh:
            return fh.read(limit)
    except FileNotFoundError:
        raise RegistryError(f"{path} does not exist (--from takes the downloaded file or its URL)") from None
    except IsADirectoryError:
        raise RegistryError(f"{path} is a folder; --from takes the file itself "
                            f"({' or '.join(ent.local_names) or 'the weights file'})") from None
    except OSError as exc:
        raise RegistryError(f"cannot read {path}: {exc}") from None


def verify(data: bytes, *, ent: ModelEntry, origin: str) -> str:
    """Check ``data`` against the pinned sha256; return the digest.

    Raises
    ------
    RegistryError
        One line naming both hashes (and the size when it differs).
    """
    got = hashlib.sha256(data).hexdigest()
    if got != ent.sha256:
        size = "" if len(data) == ent.size else f" ({len(data)} bytes, expected {ent.size})"
        raise RegistryError(f"{origin} is not the published {ent.name} file: sha256 {got}{size} does not match "
                            f"the pinned sha256 {ent.sha256}; nothing was written to the cache")
    return got


def build_model_dir(ent: ModelEntry, data: bytes, out: str | os.PathLike, *, source: str) -> dict:
    """Import verified bytes of ``ent``'s file as a model directory ``out`` (must not exist).

    ``out``'s parent holds a scratch copy of the file while importing; the written
    ``model.json`` carries the catalog's card (data, published metrics, licence, source).

    Returns
    -------
    dict
        The written ``model.json`` content.
    """
    from mgr.interop.keras.importer import import_keras

    from mgr.models.modeldir import SPEC_FILE, now_iso, write_json

    out = Path(out)
    file_name = posixpath.basename(ent.source_url)
    scratch = out.parent / f".{out.name}.{file_name}"
    scratch.write_bytes(data)
    try:
        card = ent.card()
        card["provenance"].update(pulled_from=source, pulled=now_iso())
        spec = import_keras(str(scratch), str(out), genres=",".join(ent.genres), name=ent.name, card=card)
    finally:
        scratch.unlink(missing_ok=True)
    # the conversion saw the scratch copy: record the published file and where it came from
    spec = json.loads((out / SPEC_FILE).read_text())
    for prov in (spec["provenance"], spec["card"]["provenance"]):
        prov.update(source=file_name, source_uri=source)
    write_json(str(out / SPEC_FILE), spec)
    return spec


def pull(name: str, *, source: str | None = None, force: bool = False,
         log: Callable[[str], None] = print) -> dict:
    """Fetch, verify and import ``name`` into the cache.

    Parameters
    ----------
    name : str
        A registry name (:data:`mgr.registry.catalog.CATALOG`).
    source : str, optional
        Where to take the file from instead of the catalog's URL: a local file (for
        machines without internet), ``file://``, ``http(s)://`` or ``s3://``.
    force : bool
        Replace an entry already in the cache.

    Returns
    -------
    dict
        ``name``, ``path`` (the cached model directory), ``sha256``, ``source``,
        ``already`` (True when it was cached and nothing was done).
    """
    ent = entry(name)
    final = cached_dir(name)
    if is_cached(name) and not force:
        return {"name": name, "path": str(final), "sha256": ent.sha256, "source": None, "already": True}
    source = source or ent.source_url
    log(f"fetching {name} from {source}")
    data = fetch(source, ent=ent)
    digest = verify(data, ent=ent, origin=source)  # nothing written before this point
    root = cache_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".pull-{name}-", dir=root))
    except OSError as exc:
        raise RegistryError(f"cannot write the model cache {root}: {exc}; set MGR_HOME to a writable folder") from None
    try:
        build_model_dir(ent, data, work / name, source=source)
        try:
            if final.exists():  # --force, or a leftover without model.json: moved aside, then removed
                final.rename(work / "replaced")
            os.replace(work / name, final)
        except OSError as exc:
            if not is_cached(name):  # (a concurrent pull that put the same verified model there is fine)
                raise RegistryError(f"cannot store {name} in the model cache {root}: {exc}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"name": name, "path": str(final), "sha256": digest, "source": source, "already": False}
