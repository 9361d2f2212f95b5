"""The prepared-image cache: where each image's window stack lives, and its codec.

A cache entry is one image's resized window stack as uint8 (C x H x W), losslessly stored in one
of four formats, chosen by measurement (benchmarks/RESULTS.md, 256 px, 3 windows, one core):

- ``zstd`` (default): the raw array through Zstandard level 1 (pyarrow's codec) behind a 10-byte
  header (magic, C, H, W): ~3x faster to encode and decode than ``zlib``, and no larger;
- ``zlib``: the .npy bytes through zlib level 1 (the default of ichdet 0.1; still read);
- ``png``: the windows side by side as one grayscale PNG (viewable; the smallest on real CT,
  the slowest to read and write);
- ``npy``: raw, ~190 KiB per image, the fastest to decode.

Entries live under a folder named by a hash of the settings, so a change of size, windows or
format never mixes with old entries.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import zlib
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ichdet.data.windows import Window, parse_windows
from ichdet.util.atomic import atomic_path, write_bytes
from ichdet.util.names import path_component, short_hash

FORMATS = ("zstd", "zlib", "png", "npy")
ZSTD_MAGIC = b"ICZ1"
_ZSTD_HEADER = struct.Struct("<4sHHH")  # magic, channels, rows, columns
CACHE_VERSION = 1


@dataclass(frozen=True)
class CacheSettings:
    size: int = 256
    windows: tuple[Window, ...] = parse_windows("brain,subdural,bone")
    window_kind: str = "clip"
    format: str = "zstd"

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"unknown cache format {self.format!r}; one of {', '.join(FORMATS)}")
        if self.size < 8:
            raise ValueError("size must be >= 8")

    @property
    def channels(self) -> int:
        return len(self.windows)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["windows"] = [asdict(w) for w in self.windows]
        d["version"] = CACHE_VERSION
        return d

    @classmethod
    def from_dict(cls, d: dict) -> CacheSettings:
        windows = tuple(Window(**w) for w in d["windows"])
        return cls(
            size=d["size"], windows=windows, window_kind=d["window_kind"], format=d["format"]
        )

    @property
    def key(self) -> str:
        digest = hashlib.sha1(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()
        names = "-".join(w.name.replace("/", "_") for w in self.windows)
        return f"{self.size}px_{names}_{self.format}_{digest[:8]}"


def cache_dir(root: str | os.PathLike, settings: CacheSettings) -> Path:
    return Path(root) / settings.key


def cache_key(image_id: str, source: str = "", kind: str = "dicom") -> str:
    """The name of an image's cache entry: a safe form of its id (a DICOM SOP Instance UID is
    unique across sources); for image files, whose ids are file stems, plus a hash of the
    source, so ``a/0001.png`` and ``b/0001.png`` of two folders never share an entry."""
    key = path_component(image_id)
    return f"{key}-{short_hash(source)}" if kind == "image" else key


def entry_path(directory: str | os.PathLike, key: str, fmt: str) -> Path:
    """``DIR/<2 hex>/<key>.<fmt>``: sharded so no folder holds ~750k files.

    ``key`` comes from :func:`cache_key`; a raw id that is not a plain name is hashed here too.
    """
    key = path_component(key)
    shard = hashlib.blake2b(key.encode(), digest_size=1).hexdigest()
    return Path(directory) / shard / f"{key}.{fmt}"


@lru_cache(maxsize=1)
def _zstd() -> Any:
    import pyarrow as pa

    if not pa.Codec.is_available("zstd"):
        raise RuntimeError("this pyarrow build has no zstd codec; prepare with --format zlib")
    return pa.Codec("zstd", compression_level=1)


def _encode_zstd(stack: np.ndarray) -> bytes:
    header = _ZSTD_HEADER.pack(ZSTD_MAGIC, *stack.shape)
    return header + _zstd().compress(np.ascontiguousarray(stack), asbytes=True)


def _decode_zstd(data: bytes) -> np.ndarray:
    if len(data) < _ZSTD_HEADER.size or data[:4] != ZSTD_MAGIC:
        raise ValueError("corrupt zstd cache entry (no header)")
    _, channels, rows, columns = _ZSTD_HEADER.unpack_from(data)
    size = channels * rows * columns
    try:
        raw = _zstd().decompress(data[_ZSTD_HEADER.size :], decompressed_size=size, asbytes=True)
    except OSError as exc:
        raise ValueError(f"corrupt zstd cache entry ({exc})") from exc
    # a writable array, as the other formats give (torch.from_numpy warns on read-only ones)
    return np.frombuffer(raw, np.uint8).reshape(channels, rows, columns).copy()


def encode(stack: np.ndarray, fmt: str) -> bytes:
    """uint8 C x H x W -> bytes of the cache format."""
    if stack.dtype != np.uint8 or stack.ndim != 3:
        raise ValueError(f"expected a uint8 C x H x W stack, got {stack.dtype} {stack.shape}")
    if fmt == "png":
        tiled = np.concatenate(list(stack), axis=1)  # H x C*W grayscale
        # fast zlib level with the RLE strategy: quicker and smaller than the defaults on CT
        params = [
            cv2.IMWRITE_PNG_COMPRESSION,
            1,
            cv2.IMWRITE_PNG_STRATEGY,
            cv2.IMWRITE_PNG_STRATEGY_RLE,
        ]
        ok, buf = cv2.imencode(".png", tiled, params)
        if not ok:
            raise ValueError("PNG encoding failed")
        return buf.tobytes()
    if fmt == "zstd":
        return _encode_zstd(stack)
    out = io.BytesIO()
    np.save(out, stack, allow_pickle=False)
    if fmt != "zlib":
        return out.getvalue()
    # level 1 with the RLE strategy: ~25 % faster than zlib's default strategy at the same size
    # on window stacks, and the same stream format (zlib.decompress reads both)
    compressor = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    return compressor.compress(out.getvalue()) + compressor.flush()


def decode(data: bytes | np.ndarray, fmt: str, channels: int) -> np.ndarray:
    """Bytes of the cache format -> uint8 C x H x W."""
    if fmt == "png":
        tiled = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if tiled is None:
            raise ValueError("corrupt PNG cache entry")
        h, cw = tiled.shape
        return np.ascontiguousarray(tiled.reshape(h, channels, cw // channels).transpose(1, 0, 2))
    buffer = data if isinstance(data, bytes) else data.tobytes()
    if fmt == "zstd":
        return _decode_zstd(buffer)
    raw = zlib.decompress(buffer) if fmt == "zlib" else buffer
    return np.load(io.BytesIO(raw), allow_pickle=False)


def write_entry(path: Path, stack: np.ndarray, fmt: str) -> None:
    write_bytes(path, encode(stack, fmt))


def read_entry(path: str | os.PathLike, fmt: str, channels: int) -> np.ndarray:
    if fmt == "png":
        tiled = cv2.imread(os.fspath(path), cv2.IMREAD_UNCHANGED)
        if tiled is None:
            raise FileNotFoundError(f"{path}: missing or unreadable cache entry")
        h, cw = tiled.shape
        return np.ascontiguousarray(tiled.reshape(h, channels, cw // channels).transpose(1, 0, 2))
    if fmt in ("zlib", "zstd"):
        return decode(Path(path).read_bytes(), fmt, channels)
    return np.load(path, allow_pickle=False)


def read_settings(directory: str | os.PathLike) -> CacheSettings:
    path = Path(directory) / "settings.json"
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: not a prepared cache (no settings.json)")
    return CacheSettings.from_dict(json.loads(path.read_text()))


def write_settings(directory: Path, settings: CacheSettings) -> None:
    with atomic_path(directory / "settings.json") as tmp:
        tmp.write_text(json.dumps(settings.to_dict(), indent=2) + "\n")
