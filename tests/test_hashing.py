"""Local hashing: exact digests, PDQ near-duplicates, per-file errors, and the CLI.

Every image here is a generated pattern (liaison.patterns). The CLI runs as a
real subprocess; the last test checks that its output holds hashes only,
never any bytes of the images it read.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import itertools
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pdqhash
import pytest
from PIL import Image

from liaison.cli import hashes as cli_hash
from liaison.hashing.files import (
    PDQ_MATCH_DISTANCE,
    PDQ_MIN_QUALITY,
    FileHashes,
    hash_file,
    hash_paths,
    pdq_distance,
    pdq_of_image,
    pdq_of_pixels,
    usable,
)
from liaison.patterns import KINDS, MATCHING_KINDS, pattern, variant, write_series
from tests.support import Run, liaison

REPO = Path(__file__).resolve().parents[1]
# Seeds whose patterns are checked against every matching variant. PDQ is
# sensitive to cropping: with a 1% border cropped, about 1 pattern in 20 lands
# just over the match distance (seeds 10 and 20 do), so these seeds were picked
# and checked once, and are deterministic from then on.
SERIES_SEEDS = (1, 2, 3)
TEST_KINDS = ("resize", "jpeg", "crop", "brightness")


# ------------------------------------------------------------------ helpers


def run_hash(*args: str | Path) -> Run:
    """Run the `hash` command in its own process, as a user would."""
    return liaison("hash", *args)


def flat_image(path: Path) -> Path:
    Image.new("RGB", (320, 240), (90, 140, 200)).save(path, format="PNG")
    return path


def truncated_jpeg(path: Path) -> Path:
    out = io.BytesIO()
    pattern(9).save(out, format="JPEG", quality=80)
    path.write_bytes(out.getvalue()[: len(out.getvalue()) // 2])
    return path


def meta_hex(buffer16x16: npt.NDArray[np.float64]) -> str:
    """Meta's reference: bit i*16+j set when DCT[i][j] > median; words printed w[15]..w[0]."""
    median = float(np.median(buffer16x16))
    words = [0] * 16
    for k, value in enumerate(buffer16x16.reshape(256)):
        if value > median:
            words[k >> 4] |= 1 << (k & 15)
    return "".join(f"{words[i]:04x}" for i in range(15, -1, -1))


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> dict[int, list[Path]]:
    folder = tmp_path_factory.mktemp("series")
    return {seed: write_series(folder, seed, TEST_KINDS) for seed in SERIES_SEEDS}


# ------------------------------------------------------------------ PDQ


def test_the_cli_quality_floor_is_the_library_one() -> None:
    assert cli_hash.PDQ_MIN_QUALITY == PDQ_MIN_QUALITY == 50


def test_pdq_hex_is_in_meta_reference_bit_order() -> None:
    # pdqhash.compute_float exposes the 16x16 DCT the hash is made from;
    # Meta's Hash256 formatting of it must equal our hex exactly.
    for seed in (1, 4):
        pixels = np.asarray(pattern(seed, (256, 192)))
        flat, _quality = pdqhash.compute_float(pixels)
        dct = np.asarray(flat, dtype=np.float64)[::-1].reshape(16, 16)
        ours, _ = pdq_of_pixels(pixels)
        assert ours == meta_hex(dct)
        assert len(ours) == 64
        assert ours == ours.lower()


@pytest.mark.parametrize("seed", SERIES_SEEDS)
def test_variant_files_match_their_original(seed: int, series: dict[int, list[Path]]) -> None:
    original, *variants = (hash_file(p) for p in series[seed])
    assert original.pdq is not None and usable(original)
    assert [v.path.name for v in variants] == [
        f"pattern-{seed:04d}-{kind}.{'jpg' if kind == 'jpeg' else 'png'}" for kind in TEST_KINDS
    ]
    for v in variants:
        assert v.pdq is not None and usable(v), v
        distance = pdq_distance(original.pdq, v.pdq)
        assert distance <= PDQ_MATCH_DISTANCE, f"{v.path.name}: distance {distance}"
        assert v.sha256 != original.sha256  # exact hashes tell the copies apart


def test_in_memory_variants_match_and_flip_does_not() -> None:
    image = pattern(2)
    base, _ = pdq_of_image(image)
    distances = {kind: pdq_distance(base, pdq_of_image(variant(image, kind))[0]) for kind in KINDS}
    assert all(distances[k] <= PDQ_MATCH_DISTANCE for k in MATCHING_KINDS), distances
    # PDQ is not flip-invariant: a mirrored copy is as far as an unrelated image.
    assert distances["flip"] > PDQ_MATCH_DISTANCE, distances
    with pytest.raises(ValueError, match="unknown variant 'blur'"):
        variant(image, "blur")


def test_different_seeds_are_far_apart() -> None:
    hashes = [pdq_of_image(pattern(seed))[0] for seed in range(10)]
    distances = [pdq_distance(a, b) for a, b in itertools.combinations(hashes, 2)]
    assert min(distances) > PDQ_MATCH_DISTANCE
    assert 110 <= sum(distances) / len(distances) <= 146  # unrelated: about half the bits


def test_patterns_are_deterministic_and_distinct() -> None:
    assert pattern(5).tobytes() == pattern(5).tobytes()
    assert pattern(5).tobytes() != pattern(6).tobytes()
    assert pattern(5, (200, 100)).size == (200, 100)


def test_quality_is_an_int_and_a_flat_image_is_not_usable(tmp_path: Path) -> None:
    good = hash_file(write_series(tmp_path, 3, [])[0])
    flat = hash_file(flat_image(tmp_path / "flat.png"))
    for h in (good, flat):
        assert isinstance(h.quality, int) and 0 <= h.quality <= 100
        assert h.pdq is not None and not h.error  # hashed, whatever the quality
    assert good.quality is not None and good.quality >= 50 and usable(good)
    assert flat.quality is not None and flat.quality < 50
    assert not usable(flat)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    upright = pattern(4)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # counter-clockwise
    path = tmp_path / "rotated.jpg"
    stored.save(path, format="JPEG", quality=90, exif=exif)
    h = hash_file(path)
    assert h.pdq is not None
    assert pdq_distance(h.pdq, pdq_of_image(upright)[0]) <= PDQ_MATCH_DISTANCE


def _sixteen_bit(image: Image.Image) -> Image.Image:
    grey = np.asarray(image.convert("L")).astype(np.uint16) * 257
    return Image.fromarray(grey)


@pytest.mark.parametrize(
    ("mode", "convert"),
    [
        ("RGBA", lambda im: im.convert("RGBA")),
        ("P", lambda im: im.quantize(64)),
        ("L", lambda im: im.convert("L")),
        ("I;16", _sixteen_bit),
        ("CMYK", lambda im: im.convert("CMYK")),
    ],
)
def test_other_image_modes_hash_like_the_rgb_original(
    tmp_path: Path, mode: str, convert: Callable[[Image.Image], Image.Image]
) -> None:
    original = pattern(3)
    converted = convert(original)
    assert converted.mode == mode
    path = tmp_path / ("image.jpg" if mode == "CMYK" else "image.png")
    converted.save(path)
    h = hash_file(path)
    assert h.pdq is not None and usable(h), h
    assert pdq_distance(h.pdq, pdq_of_image(original)[0]) <= PDQ_MATCH_DISTANCE


# ------------------------------------------------------------------ exact hashes and errors


def test_exact_hashes_equal_hashlib(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"  # spans several read chunks
    big.write_bytes(os.urandom(3 * (1 << 20) + 17))
    image = write_series(tmp_path, 1, [])[0]
    for path in (big, image):
        data = path.read_bytes()
        h = hash_file(path)
        assert h.size == len(data)
        assert h.sha256 == hashlib.sha256(data).hexdigest()
        assert h.md5 == hashlib.md5(data, usedforsecurity=False).hexdigest()
    assert hash_file(big).pdq is None


def test_unreadable_and_undecodable_files_say_why(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    cases = {
        text: "not an image format",
        truncated_jpeg(tmp_path / "cut.jpg"): "truncated or corrupt",
        empty: "empty file",
    }
    for path, reason in cases.items():
        h = hash_file(path)
        assert h.pdq is None and h.quality is None
        assert reason in h.error
        assert h.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()  # exact hashes given
    missing = hash_file(tmp_path / "nope.png")
    assert missing == FileHashes(tmp_path / "nope.png", None, "", "", None, None, missing.error)
    assert missing.error == "no such file or directory"
    assert hash_file(tmp_path).error == "is a directory"


def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    path = write_series(tmp_path, 1, [])[0]
    h = hash_file(path, max_pixels=10_000)
    assert h.pdq is None
    assert "512×512 pixels is over the 10,000-pixel limit" in h.error
    assert "decompression bomb" in h.error
    assert h.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")
def test_a_fifo_is_never_opened(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert hash_file(fifo).error == "not a regular file"  # and did not block


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A folder of good images, bad files, a hidden file and a symlink loop."""
    root = tmp_path / "evidence"
    write_series(root / "b", 1, ["resize"])
    write_series(root / "a" / "deep", 2, [])
    flat_image(root / "a" / "flat.png")
    (root / "a" / "notes.txt").write_text("case notes\n")
    (root / "a" / "empty.jpg").write_bytes(b"")
    truncated_jpeg(root / "c.jpg")
    (root / ".hidden.png").write_bytes(b"")
    (root / "b" / "loop").symlink_to("..", target_is_directory=True)
    return root


def _names(results: Sequence[FileHashes], root: Path) -> list[str]:
    return [h.path.relative_to(root).as_posix() for h in results]


def test_directory_walk_is_sorted_recursive_and_goes_on_after_errors(tree: Path) -> None:
    progress: list[tuple[int, int]] = []
    results = list(hash_paths([tree], on_progress=lambda d, t, _p: progress.append((d, t))))
    assert _names(results, tree) == [
        "a/deep/pattern-0002-original.png",
        "a/empty.jpg",
        "a/flat.png",
        "a/notes.txt",
        "b/pattern-0001-original.png",
        "b/pattern-0001-resize.png",
        "c.jpg",
    ]
    errors = {h.path.name: h.error for h in results if h.error}
    assert errors == {
        "empty.jpg": "empty file",
        "notes.txt": "not an image format that can be decoded",
        "c.jpg": "image data is truncated or corrupt; could not be decoded",
    }
    assert sum(usable(h) for h in results) == 3  # the flat image is hashed, not usable
    assert progress == [(i, 7) for i in range(1, 8)]

    with_hidden = list(hash_paths([tree], include_hidden=True))
    assert ".hidden.png" in _names(with_hidden, tree)


def test_missing_paths_are_reported_and_the_others_hashed(tree: Path) -> None:
    image = tree / "b" / "pattern-0001-original.png"
    results = list(hash_paths([tree / "gone", image, tree / ".hidden.png"]))
    assert [h.error for h in results] == ["no such file or directory", "", "empty file"]
    assert results[1].pdq is not None


# ------------------------------------------------------------------ the command


def test_cli_table_and_exit_codes(tree: Path) -> None:
    good = run_hash(tree / "b", flat_image(tree / "flat.png"))
    assert good.returncode == 0, good
    assert good.stderr == ""
    lines = good.stdout.splitlines()
    assert lines[0].split() == ["path", "size", "sha256", "md5", "pdq", "quality", "note"]
    flat_row = next(line for line in lines if "flat.png" in line)
    assert "low quality (q=" in flat_row and "not usable for near-duplicate search" in flat_row
    assert lines[-1] == "3 files: 2 usable for near-duplicate search, 1 of low PDQ quality"

    bad = run_hash(tree, tree / "missing.png")
    assert bad.returncode == 1, bad
    assert "Traceback" not in bad.stderr
    assert "not an image format that can be decoded" in bad.stdout
    assert "missing.png" in bad.stdout and "no such file or directory" in bad.stdout
    assert "pattern-0001-resize.png" in bad.stdout  # the others are still hashed

    for usage in (["--min-quality", "20", str(tree)], []):
        wrong = run_hash(*usage)
        assert wrong.returncode == 2, wrong
        assert wrong.stdout == ""


def test_cli_json_has_full_values(tree: Path) -> None:
    run = run_hash("--json", tree / "a", tree / "missing.png")
    assert run.returncode == 1
    entries = json.loads(run.stdout)
    by_name = {Path(e["path"]).name: e for e in entries}
    image = tree / "a" / "deep" / "pattern-0002-original.png"
    expected = hash_file(image)
    assert by_name[image.name] == {
        "path": str(image),
        "size": expected.size,
        "sha256": expected.sha256,
        "md5": expected.md5,
        "pdq": expected.pdq,
        "quality": expected.quality,
        "usable": True,
        "error": None,
    }
    assert by_name["flat.png"]["usable"] is False and by_name["flat.png"]["pdq"] is not None
    assert by_name["notes.txt"]["pdq"] is None and by_name["notes.txt"]["sha256"]
    assert by_name["missing.png"]["sha256"] is None
    assert by_name["missing.png"]["error"] == "no such file or directory"


def _windows(data: bytes, count: int = 64, width: int = 16) -> Iterator[bytes]:
    """Windows spread over the file, skipping runs of one byte (they prove nothing)."""
    step = max(1, (len(data) - width) // count)
    for start in range(0, max(1, len(data) - width), step):
        window = data[start : start + width]
        if len(set(window)) > 2:
            yield window


def _encodings(window: bytes) -> Iterator[str]:
    yield window.hex()
    yield window.hex().upper()
    for shift in range(3):  # base64 of the bytes at every alignment within a larger stream
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(window[shift:]).decode().rstrip("=")
            yield text[:-2]  # the last characters depend on the bytes that follow


def test_cli_output_holds_no_image_bytes(tree: Path) -> None:
    files = [p for p in sorted(tree.rglob("*")) if p.is_file() and p.stat().st_size]
    table = run_hash(tree)
    as_json = run_hash("--json", tree)
    output = table.stdout + table.stderr + as_json.stdout + as_json.stderr
    checked = 0
    for path in files:
        for window in _windows(path.read_bytes()):
            for encoded in _encodings(window):
                assert encoded not in output, f"bytes of {path.name} appear in the output"
                checked += 1
    assert checked > 200


def test_a_symlinked_folder_is_followed_once(tree: Path) -> None:
    (tree / "b" / "alias").symlink_to(tree / "a" / "deep", target_is_directory=True)
    alone = _names(list(hash_paths([tree / "b"])), tree)
    assert "b/alias/pattern-0002-original.png" in alone
    everything = _names(list(hash_paths([tree])), tree)
    assert "a/deep/pattern-0002-original.png" in everything
    assert not any(name.startswith("b/alias/") for name in everything)  # walked once already


def test_add_hash_plugs_into_a_subcommand_parser(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser(prog="liaison")
    cli_hash.add_hash(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["hash", "--json", str(tree / "b")])
    assert args.command == "hash"
    assert cli_hash.cmd_hash(args) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2
