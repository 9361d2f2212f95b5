"""The prepared-image cache: where each image's window stack lives, and its codec.

A cache entry is one image's resized window stack as uint8 (C x H x W), losslessly stored in one
of three formats, chosen by measurement (benchmarks/RESULTS.md, 256 px, 3 windows, one core):

- ``zlib`` (default): the raw array (.npy bytes) through zlib level 1: ~50 KiB per image, ~0.4 ms
  to decode, ~1.3 ms to encode;
- ``png``: the windows side by side as one grayscale PNG (viewable): 6 % (synthetic) to 17 %
  (real CT) smaller, but ~1.7x slower to decode and ~1.6x slower to encode;
- ``npy``: raw, ~190 KiB per image, ~0.06 ms to decode.

Entries live under a folder named by a hash of the settings, so a change of size, windows or
format never mixes with old entries.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from ichdet.data.windows import Window, parse_windows
from ichdet.util.atomic import atomic_path, write_bytes

FORMATS = ("zlib", "png", "npy")
CACHE_VERSION = 1


@dataclass(frozen=True)
class CacheSettings:
    size: int = 256
    windows: tuple[Window, ...] = parse_windows("brain,subdural,bone")
    window_kind: str = "clip"
    format: str = "zlib"

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


def entry_path(directory: str | os.PathLike, image_id: str, fmt: str) -> Path:
    """``DIR/<2 hex>/<image_id>.<fmt>``: sharded so no folder holds ~750k files."""
    shard = hashlib.blake2b(image_id.encode(), digest_size=1).hexdigest()
    return Path(directory) / shard / f"{image_id}.{fmt}"


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
    out = io.BytesIO()
    np.save(out, stack, allow_pickle=False)
    return zlib.compress(out.getvalue(), 1) if fmt == "zlib" else out.getvalue()


def decode(data: bytes | np.ndarray, fmt: str, channels: int) -> np.ndarray:
    """Bytes of the cache format -> uint8 C x H x W."""
    if fmt == "png":
        tiled = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if tiled is None:
            raise ValueError("corrupt PNG cache entry")
        h, cw = tiled.shape
        return np.ascontiguousarray(tiled.reshape(h, channels, cw // channels).transpose(1, 0, 2))
    buffer = data if isinstance(data, bytes) else data.tobytes()
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
    if fmt == "zlib":
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
