"""Pictures of a pattern: a block picture for the terminal and a PNG file."""
from __future__ import annotations

import struct
import zlib

import torch

CHARS = {"unicode": (" ", "░", "█"), "ascii": (".", "+", "#")}


def coverage(mask: torch.Tensor, cells: int) -> torch.Tensor:
    """Fraction of visible pairs in each of (at most) cells x cells tiles of a [Lq, Lk] mask."""
    lq, lk = mask.shape
    rq, rk = -(-lq // min(cells, max(lq, 1))), -(-lk // min(cells, max(lk, 1)))
    nq, nk = -(-lq // rq), -(-lk // rk)
    padded = torch.nn.functional.pad(mask.float(), (0, nk * rk - lk, 0, nq * rq - lq))
    inside = torch.nn.functional.pad(torch.ones(lq, lk), (0, nk * rk - lk, 0, nq * rq - lq))
    seen = padded.view(nq, rq, nk, rk).sum(dim=(1, 3))
    total = inside.view(nq, rq, nk, rk).sum(dim=(1, 3)).clamp(min=1)
    return seen / total


def block_picture(mask: torch.Tensor, cells: int = 64, style: str = "unicode") -> str:
    """Rows of characters: empty, partly visible and fully visible tiles."""
    return coverage_picture(coverage(mask, cells), style)


def coverage_picture(cov: torch.Tensor, style: str = "unicode") -> str:
    """Rows of characters for tile coverages [nq, nk] in [0, 1]."""
    empty, part, full = CHARS[style]
    lines = []
    for row in cov.tolist():
        lines.append("".join(empty if c == 0 else full if c == 1 else part for c in row))
    return "\n".join(lines)


def write_png(path: str, images: list[torch.Tensor], size: int = 512, gap: int = 8) -> None:
    """Write masks [Lq, Lk] side by side as a grayscale PNG (dark = visible)."""
    write_coverage_png(path, [coverage(m, size) for m in images], gap)


def write_coverage_png(path: str, coverages: list[torch.Tensor], gap: int = 8) -> None:
    """Write tile coverages [nq, nk] in [0, 1] side by side as a grayscale PNG (dark = visible)."""
    tiles = [1.0 - c.float() for c in coverages]
    height = max(t.shape[0] for t in tiles)
    width = sum(t.shape[1] for t in tiles) + gap * (len(tiles) - 1)
    canvas = torch.ones(height, width)
    x = 0
    for t in tiles:
        canvas[: t.shape[0], x : x + t.shape[1]] = t
        x += t.shape[1] + gap
    pixels = (canvas * 255).round().to(torch.uint8)
    raw = b"".join(b"\x00" + bytes(row) for row in pixels.tolist())

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9))
                + chunk(b"IEND", b""))
