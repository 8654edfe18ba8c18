"""The models mgr knows by name: where their files are published and what pins them.

Each :class:`ModelEntry` names one set of published weights, the URL they are fetched from,
their sha256 (a pull verifies it before anything is written) and what is known of them
(data, published accuracy, licence). The weights themselves are never part of mgr: a
user fetches them with ``mgr models pull NAME`` into the local cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mgr.errors import ModelError

__all__ = ["ModelEntry", "CATALOG", "entry", "RegistryError"]


class RegistryError(ModelError):
    """A named model is unknown, not pulled yet, or its download does not verify."""


@dataclass(frozen=True)
class ModelEntry:
    """One named model.

    Attributes
    ----------
    name : str
        The registry name (``--model NAME``).
    architecture : str
        mgr architecture (``cnn``/``crnn``) and what it is.
    genres : tuple of str
        The vocabulary in output order.
    data : str
        What it was trained on.
    published_accuracy : float
        Test accuracy its authors published (fraction).
    published_on : str
        Where that accuracy was measured and by whom.
    licence, licence_url : str
        The weights' licence (the weights are never packaged with mgr).
    source_url : str
        Where ``mgr models pull`` downloads the file from (pinned to a commit).
    homepage : str
        The repository the file was published in.
    sha256 : str
        Hex digest of the file at ``source_url``; nothing else is accepted.
    size : int
        Its size in bytes (downloads stop beyond it).
    file_format : str
        ``keras2-h5``: imported with :func:`mgr.interop.keras.importer.import_keras`.
    local_names : tuple of str
        File names under which a copy may sit on this machine (see ``mgr.registry.cache``).
    """

    name: str
    architecture: str
    genres: tuple
    data: str
    published_accuracy: float
    published_on: str
    licence: str
    licence_url: str
    source_url: str
    homepage: str
    sha256: str
    size: int
    file_format: str = "keras2-h5"
    local_names: tuple = field(default=())

    def card(self) -> dict:
        """Model card entries this catalog knows (laid over those of the import)."""
        return {
            "data": {"training_data": self.data, "genres": list(self.genres)},
            "metrics": {"published": {"test_accuracy": self.published_accuracy, "on": self.published_on}},
            "licence": {"name": self.licence, "url": self.licence_url},
            "provenance": {"registry_name": self.name, "source_url": self.source_url, "homepage": self.homepage,
                           "sha256": self.sha256},
        }


_GTZAN = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock")
_PAPER_COMMIT = "4d20ae95a934e9ef9b36b5b750ee690650a742b9"

#: name → entry; also the choices of ``mgr models pull``
CATALOG: dict[str, ModelEntry] = {
    "paper-gtzan": ModelEntry(
        name="paper-gtzan",
        architecture="cnn: the paper's Model 2 (Conv1D(256,4,stride 2)→ReLU→MaxPool(2) ×3, GAP ∥ GMP, "
        "Dropout(0.5), Dense(10), softmax) on 647 frames × 128 log-mel bands (30 s)",
        genres=_GTZAN,
        data="GTZAN (10 genres × 100 clips of 30 s), the paper's 70/20/10 split",
        published_accuracy=0.740,
        published_on="GTZAN test split, N. G. Titus, 'Neural networks for music genre recognition' (Model 2)",
        licence="GPL-3.0",
        licence_url="https://www.gnu.org/licenses/gpl-3.0.html",
        source_url=f"https://raw.githubusercontent.com/nikhiltitus/genre-recognition/{_PAPER_COMMIT}/models/weights.h5",
        homepage=f"https://github.com/nikhiltitus/genre-recognition/tree/{_PAPER_COMMIT}",
        sha256="28d160c38696cecce228ffed625c8aad8cfde76a8fba93a1276bacae77cfb073",
        size=2673936,
        local_names=("paper_gtzan_cnn.h5", "weights.h5"),
    ),
}


def entry(name: str) -> ModelEntry:
    """The catalog entry of ``name``.

    Raises
    ------
    RegistryError
        When mgr knows no model of that name (the message lists those it knows).
    """
    try:
        return CATALOG[name]
    except KeyError:
        raise RegistryError(f"no model named {name!r} in mgr's registry; known: {', '.join(CATALOG)} "
                            "(`mgr models list`)") from None
