"""Named models: a catalog of published weights pinned by sha256, a local cache
(``$MGR_HOME``, default ``~/.cache/mgr/models``) filled by ``mgr models pull``, and the
resolution of ``--model NAME|DIR`` (an existing path wins over a name). No Ray here."""

from mgr.registry.cache import cache_root, cached_dir, find_local_weights, is_cached, resolve_model
from mgr.registry.catalog import CATALOG, ModelEntry, RegistryError, entry

__all__ = ["CATALOG", "ModelEntry", "RegistryError", "entry", "cache_root", "cached_dir", "is_cached",
           "resolve_model", "find_local_weights"]
