"""Hash files locally: SHA-256 and MD5 for exact copies, PDQ for near-duplicates.

Hashing is the only thing that ever touches an investigator's files, and it
returns hashes and nothing else: no bytes, thumbnails or excerpts of a file are
kept, logged or sent anywhere, and the error texts are our own fixed phrases
(never a decoder's message, which could quote file contents).

PDQ is Meta's 256-bit perceptual hash. Its hex form here is the reference one
(``Hash256.toHexString`` in Meta's C++, Java and Python code): 16 words of 16
bits, word 15 first, each word most significant bit first, so the first hex
digit holds bits 255..252. A PDQ hash comes with a quality score 0..100; below
:data:`PDQ_MIN_QUALITY` (flat or nearly flat images) it matches too much to be
used. Two hashes match when their Hamming distance is at most
:data:`PDQ_MATCH_DISTANCE`. PDQ survives resizing, re-encoding, small crops and
brightness changes; it is *not* invariant to flips or rotations.

Images are decoded as a viewer shows them: first frame, EXIF orientation
applied, converted to RGB (alpha dropped, as Meta's reference hasher does).
"""

from __future__ import annotations

import hashlib
import os
import stat
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pdqhash
from PIL import Image, ImageOps, UnidentifiedImageError

from liaison.query import DEFAULT_NEAR_DISTANCE, MIN_PDQ_QUALITY

# The query model's thresholds, under the names hashing code reads best.
PDQ_MIN_QUALITY = MIN_PDQ_QUALITY
PDQ_MATCH_DISTANCE = DEFAULT_NEAR_DISTANCE

DEFAULT_MAX_PIXELS = 89_478_485
"""Refuse to decode images larger than this (Pillow's own decompression-bomb limit)."""

CHUNK_BYTES = 1 << 20

ProgressCallback = Callable[[int, int, Path], None]
"""``on_progress(done, total, path)``, called after each file is hashed."""


@dataclass(frozen=True, slots=True)
class FileHashes:
    """What hashing one file produced.

    * Every readable file has ``size``, ``sha256`` and ``md5``.
    * ``pdq`` and ``quality`` are set when the file decodes as an image;
      otherwise they are None and ``error`` says why.
    * A file that cannot be read at all has ``size`` None, empty digests and
      an ``error``.
    """

    path: Path
    size: int | None
    sha256: str
    md5: str
    pdq: str | None
    quality: int | None
    error: str = ""

    @property
    def readable(self) -> bool:
        """The exact hashes (SHA-256, MD5) were computed."""
        return bool(self.sha256)

    @property
    def complete(self) -> bool:
        """Every hash was computed (the PDQ one may still be of low quality)."""
        return self.pdq is not None


def usable(h: FileHashes, min_quality: int = PDQ_MIN_QUALITY) -> bool:
    """The file has a PDQ hash good enough for near-duplicate search."""
    return h.pdq is not None and h.quality is not None and h.quality >= min_quality


def pdq_distance(a: str, b: str) -> int:
    """The Hamming distance of two PDQ hashes in hex form."""
    if len(a) != 64 or len(b) != 64:
        raise ValueError("a PDQ hash is 64 hex digits")
    return (int(a, 16) ^ int(b, 16)).bit_count()


def pdq_of_pixels(pixels: npt.NDArray[np.uint8]) -> tuple[str, int]:
    """PDQ hash (reference hex form) and quality of an H×W×3 RGB array.

    ``pdqhash.compute`` returns the 256 bits as a vector whose element ``i``
    is bit ``255 - i`` of Meta's ``Hash256`` (it reverses the word/bit order
    when it builds the vector), so packing the vector most significant bit
    first gives exactly the bytes of ``Hash256.toHexString``.
    """
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"expected an H×W×3 uint8 array, got {pixels.shape} {pixels.dtype}")
    bits, quality = pdqhash.compute(pixels)
    vector = np.asarray(bits, dtype=np.uint8)
    if vector.shape != (256,):
        raise ValueError(f"pdqhash returned {vector.shape} bits, expected 256")
    return np.packbits(vector).tobytes().hex(), int(quality)


def rgb_pixels(image: Image.Image) -> npt.NDArray[np.uint8]:
    """The image as an H×W×3 uint8 array.

    16-bit greyscale ("I;16", and "I", which Pillow also uses for it) is scaled
    from 0..65535 to 0..255: Pillow's own conversion would clip it to white.
    """
    if image.mode.startswith("I;16") or image.mode == "I":
        grey = np.asarray(image, dtype=np.float64) / 257.0
        grey8 = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
        return np.repeat(grey8[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def pdq_of_image(image: Image.Image) -> tuple[str, int]:
    """PDQ hash and quality of a Pillow image, as it would be hashed from a file."""
    return pdq_of_pixels(rgb_pixels(image))


def _unreadable(path: Path, reason: str) -> FileHashes:
    return FileHashes(path, None, "", "", None, None, reason)


def _os_reason(exc: OSError) -> str:
    return (exc.strerror or type(exc).__name__).lower()


def _digests(path: Path) -> tuple[int, str, str]:
    """Size, SHA-256 and MD5 of a file, read once in chunks."""
    sha256 = hashlib.sha256()
    md5 = hashlib.md5(usedforsecurity=False)
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            sha256.update(chunk)
            md5.update(chunk)
            size += len(chunk)
    return size, sha256.hexdigest(), md5.hexdigest()


class _NotHashable(Exception):
    """The file's bytes do not give a PDQ hash; the message is ours, never the decoder's."""


def _decode(path: Path, max_pixels: int) -> npt.NDArray[np.uint8]:
    """The file's pixels as a viewer shows them, or :class:`_NotHashable` saying why not."""
    try:
        with warnings.catch_warnings():
            # Decoder warnings (odd metadata, palette transparency...) are not the
            # investigator's concern, and the decompression-bomb warning is replaced
            # by our own pixel limit, checked before anything is decoded.
            warnings.simplefilter("ignore")
            with Image.open(path) as image:  # reads the header only
                width, height = image.size
                if width * height > max_pixels:
                    raise _NotHashable(
                        f"image of {width}×{height} pixels is over the {max_pixels:,}-pixel "
                        "limit (possible decompression bomb); not decoded"
                    )
                if width == 0 or height == 0:
                    raise _NotHashable("image has no pixels")
                return rgb_pixels(ImageOps.exif_transpose(image))
    except _NotHashable:
        raise
    except UnidentifiedImageError as exc:
        raise _NotHashable("not an image format that can be decoded") from exc
    except Image.DecompressionBombError as exc:
        raise _NotHashable(
            "image is over the decoder's pixel limit (possible decompression bomb); not decoded"
        ) from exc
    except MemoryError as exc:
        raise _NotHashable("image is too large to decode in memory") from exc
    except Exception as exc:
        # Truncated and corrupt files surface as OSError, SyntaxError, ValueError,
        # struct.error, EOFError... from the many format plugins.
        raise _NotHashable("image data is truncated or corrupt; could not be decoded") from exc


def hash_file(path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> FileHashes:
    """Hash one file. Never raises for a problem with the file: it is in ``error``."""
    try:
        st = path.stat()
    except FileNotFoundError:
        reason = "broken symbolic link" if path.is_symlink() else "no such file or directory"
        return _unreadable(path, reason)
    except OSError as exc:
        return _unreadable(path, f"cannot read: {_os_reason(exc)}")
    if stat.S_ISDIR(st.st_mode):
        return _unreadable(path, "is a directory")
    if not stat.S_ISREG(st.st_mode):
        # Never open a FIFO, socket or device: reading could block or never end.
        return _unreadable(path, "not a regular file")
    try:
        size, sha256, md5 = _digests(path)
    except OSError as exc:
        return _unreadable(path, f"cannot read: {_os_reason(exc)}")
    if size == 0:
        return FileHashes(path, 0, sha256, md5, None, None, "empty file")
    try:
        pdq, quality = pdq_of_pixels(_decode(path, max_pixels))
    except _NotHashable as exc:
        return FileHashes(path, size, sha256, md5, None, None, str(exc))
    except MemoryError:
        return FileHashes(path, size, sha256, md5, None, None, "image is too large to hash")
    return FileHashes(path, size, sha256, md5, pdq, quality)


@dataclass(frozen=True, slots=True)
class _Found:
    path: Path
    error: str = ""


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _loops_back(link: Path, parent: Path) -> bool:
    """A symlinked directory that is ``parent`` itself or one of its ancestors."""
    target = Path(os.path.realpath(link))
    here = Path(os.path.realpath(parent))
    return target == here or target in here.parents


def _walk(top: Path, include_hidden: bool, seen: set[tuple[int, int]], out: list[_Found]) -> None:
    """Files under ``top`` in sorted order, following symlinks but never into a loop.

    The order is that of a sorted listing: a folder's entries by name, each
    subfolder's files in its place. Iterative, so deep trees cannot overflow.
    """
    pending: list[tuple[Path, bool]] = [(top, True)]  # (path, is a folder), next on top
    while pending:
        path, is_folder = pending.pop()
        if not is_folder:
            out.append(_Found(path))
            continue
        try:
            st = path.stat()
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue  # reached again through a symlink: once is enough
            seen.add(key)
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            out.append(_Found(path, f"cannot read directory: {_os_reason(exc)}"))
            continue
        children: list[tuple[Path, bool]] = []
        for entry in entries:
            if not include_hidden and _hidden(entry.name):
                continue
            child = Path(entry.path)
            try:
                is_dir = entry.is_dir()  # follows symlinks
            except OSError:
                is_dir = False
            if is_dir and entry.is_symlink() and _loops_back(child, path):
                continue
            children.append((child, is_dir))
        pending.extend(reversed(children))


def find_files(paths: Sequence[Path], *, include_hidden: bool = False) -> list[Path]:
    """The files ``hash_paths`` would hash, in order (directories walked, sorted)."""
    return [f.path for f in _collect(paths, include_hidden)]


def _collect(paths: Sequence[Path], include_hidden: bool) -> list[_Found]:
    found: list[_Found] = []
    seen: set[tuple[int, int]] = set()
    for path in paths:
        if path.is_dir():
            _walk(path, include_hidden, seen, found)
        else:
            found.append(_Found(path))  # named explicitly: hashed even if hidden
    return found


def hash_paths(
    paths: Sequence[Path],
    *,
    on_progress: ProgressCallback | None = None,
    include_hidden: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Iterator[FileHashes]:
    """Hash files and (recursively, sorted) the files under directories.

    Problems are per file: a missing path, an unreadable directory or file, or
    a file that is not an image gives a :class:`FileHashes` with ``error``
    set, and hashing goes on. Hidden files and directories (names starting
    with ".") inside a directory are skipped unless ``include_hidden``.
    """
    found = _collect(paths, include_hidden)
    total = len(found)
    for done, item in enumerate(found, start=1):
        if item.error:
            result = _unreadable(item.path, item.error)
        else:
            result = hash_file(item.path, max_pixels=max_pixels)
        if on_progress is not None:
            on_progress(done, total, item.path)
        yield result
