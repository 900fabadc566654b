"""Tiled upscaling of any image size, for the reference model and for fixed-shape artifacts.

Tiles overlap and are blended with feathered weights (linear ramps across each overlap,
none at the image border), so there are no seams. Tiles are placed so that the last one
ends on the image border; only an image smaller than one tile is padded (by replication),
and the padding is cropped away. One routing decision covers the whole image: the router
sees the whole image resized to its input size, so neighbouring tiles use the same experts
(per-tile routing is an option). Output rows are handed out in bands as soon as no later
tile can touch them, so memory is bounded by a band of tiles, not by the image.

An engine may first walk over every tile to gather whole-image statistics (`prepare`): the
reference does, with `whole_image_norm`, so that its GroupNorms normalise each tile with the
statistics of the whole image (`mor_edge.global_norm`) and tiles match the untiled output.

Identical tiles give identical outputs (routing is per image, or a function of the tile), so
a tile whose pixels were seen before reuses that output: a flat image costs one model run, not
one per tile. An engine that takes several tiles per call (`batch`) gets the next tiles not
yet run, in row order, all on the image's one routing decision (per-tile routing runs one
tile per call). A `TimeBudget` refuses, after a few tiles, work that would run for longer than
the user allowed.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from PIL import Image
from tqdm import tqdm

from .errors import UserError
from .image_io import LoadedImage

TileInputs = Callable[[], Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]]


class TileEngine(Protocol):
    """What tiling needs from a model or a runtime."""

    @property
    def scale(self) -> int: ...

    @property
    def router_size(self) -> int: ...

    @property
    def margin(self) -> int:
        """SR pixels at a tile's border to leave out of the blend (see `ramp`)."""
        ...

    @property
    def batch(self) -> int:
        """Most tiles `run` takes in one call."""
        ...

    def route(self, lr: np.ndarray) -> np.ndarray: ...

    def run(self, lr: np.ndarray, s: np.ndarray) -> np.ndarray:
        """SR of LR tiles (n, 3, h, w), 1 <= n <= batch, all routed on `s` (1, K)."""
        ...

    def passes(self) -> int:
        """How many times `prepare` walks over the tiles (0: it does not)."""
        ...

    def prepare(self, tiles: TileInputs) -> None:
        """Called before any tile runs, with a way to iterate over every tile's (lr, s,
        owned pixels); engines that need whole-image statistics gather them here."""
        ...


@dataclass
class TimeBudget:
    """Refuses a job whose estimated run time exceeds `seconds` (None: no limit). The estimate
    is the pace of the computed steps after the first (a warm-up) times the steps left, taken
    once `probe` steps have run, so a refused job has done only a few tiles."""

    seconds: float | None
    probe: int = 3
    _steps: int = field(default=0, init=False)
    _start: float = field(default=0.0, init=False)

    def step(self, total: int, what: str) -> None:
        """Called after each of `total` computed steps."""
        self._steps += 1
        if self._steps == 1:
            self._start = time.perf_counter()
        if self.seconds is None or self._steps != self.probe or total <= self.probe:
            return
        pace = (time.perf_counter() - self._start) / (self.probe - 1)
        estimate = pace * (total - self.probe)
        if estimate > self.seconds:
            raise UserError(
                f"{what} would take about {_duration(estimate)} ({total} tile runs at {pace:.2f} s); "
                f"the limit is {_duration(self.seconds)}: raise --max-minutes (0: no limit), or use "
                "an artifact or a smaller image"
            )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.1f} s"
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min"


class TileCache:
    """Outputs of tiles already run, keyed by the tile's pixels, least recently used dropped
    beyond `max_bytes` (a few full-size tiles)."""

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._bytes = 0

    @staticmethod
    def key(pixels: np.ndarray) -> bytes:
        return hashlib.blake2b(np.ascontiguousarray(pixels).tobytes(), digest_size=16).digest()

    def get(self, key: bytes) -> np.ndarray | None:
        found = self._items.get(key)
        if found is not None:
            self._items.move_to_end(key)
        return found

    def put(self, key: bytes, sr: np.ndarray) -> None:
        self._items[key] = sr
        self._bytes += sr.nbytes
        while self._bytes > self.max_bytes and len(self._items) > 1:
            self._bytes -= self._items.popitem(last=False)[1].nbytes


def owned_span(starts: list[int], index: int, tile: int, length: int) -> tuple[int, int]:
    """The part of tile `index` (origins `starts`) nearest to it: overlaps split at their middle.
    Relative to the tile's origin; the spans of all tiles cover [0, length) once."""
    start = starts[index]
    lo = 0 if index == 0 else (starts[index - 1] + tile + start) // 2
    hi = length if index == len(starts) - 1 else (start + tile + starts[index + 1]) // 2
    return lo - start, min(hi, length) - start


def ownership(ys: list[int], xs: list[int], iy: int, ix: int, tile: int, h: int, w: int) -> np.ndarray:
    """(tile, tile) map of the pixels tile (iy, ix) owns; zero on padding beyond the image."""
    y0, y1 = owned_span(ys, iy, tile, h)
    x0, x1 = owned_span(xs, ix, tile, w)
    owned = np.zeros((tile, tile), np.float32)
    owned[y0:y1, x0:x1] = 1.0
    return owned


def positions(length: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along one axis: stride tile - overlap, the last tile ending on the border."""
    if length <= tile:
        return [0]
    stride = max(1, tile - overlap)
    starts = list(range(0, length - tile, stride))
    return [*starts, length - tile]


def ramp(size: int, ramp_len: int, ramp_start: bool, ramp_end: bool, margin: int = 0) -> np.ndarray:
    """1-D feather weights at each interior side: 0 over the first `margin` pixels (where a
    tile's output differs from the whole image's: the colour step's and the bicubic's reach
    past the tile border), then linear up to `ramp_len`; 1 elsewhere. The margin is capped
    below half the overlap, so that two neighbours always cover every pixel."""
    w = np.ones(size, dtype=np.float32)
    if ramp_len > 0:
        margin = min(margin, (ramp_len - 1) // 2)
        r = np.clip((np.arange(size, dtype=np.float32) + 0.5 - margin) / (ramp_len - margin), 0, None)
        if ramp_start:
            w = np.minimum(w, r)
        if ramp_end:
            w = np.minimum(w, r[::-1])
    return w


def router_input(image: LoadedImage, size: int) -> np.ndarray:
    """The whole image resized (antialiased) to the router's input size: (1, 3, size, size)."""
    rgb = image.rgb if image.rgb.dtype == np.uint8 else (image.rgb >> 8).astype(np.uint8)
    small = Image.fromarray(rgb).resize((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0)
    return np.ascontiguousarray(np.asarray(small, dtype=np.float32).transpose(2, 0, 1)[None] / 255.0)


def _padded_crop(image: LoadedImage, y: int, x: int, tile: int) -> np.ndarray:
    """A tile x tile crop at (y, x); sides of an image smaller than the tile are replicated."""
    crop = image.crop(y, min(y + tile, image.height), x, min(x + tile, image.width))
    pad_h, pad_w = tile - crop.shape[2], tile - crop.shape[3]
    if pad_h or pad_w:
        crop = np.pad(crop, ((0, 0), (0, 0), (0, pad_h), (0, pad_w)), mode="edge")
    return crop


def upscale_tiled(
    image: LoadedImage,
    engine: TileEngine,
    tile: int,
    overlap: int,
    per_tile_routing: bool = False,
    progress: bool = True,
    budget: TimeBudget | None = None,
) -> Generator[np.ndarray, None, None]:
    """Yield the SR colour image as float32 row bands (h, W*scale, 3), top to bottom.

    A band is a view into the one accumulation buffer (a tile high) and is overwritten on
    the next iteration: use or copy it before asking for the next (`collect` copies). The
    tiles form a grid and each tile's weight is wy (x) wx, so the total weight at a pixel is
    the product of the summed 1-D ramps and is divided out in place: no 2-D weight buffer,
    no per-band temporaries, which keeps a 16k-wide output within a few band-sized buffers.
    A tile with the pixels of an earlier one reuses its output (`TileCache`)."""
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got {overlap} for tile {tile}")
    scale = engine.scale
    h, w = image.height, image.width
    ys, xs = positions(h, tile, overlap), positions(w, tile, overlap)
    out_w, out_h, side = w * scale, h * scale, tile * scale
    margin = engine.margin
    ramps_y = [ramp(side, overlap * scale, i > 0, i < len(ys) - 1, margin) for i in range(len(ys))]
    ramps_x = [ramp(side, overlap * scale, i > 0, i < len(xs) - 1, margin) for i in range(len(xs))]
    total_y, total_x = np.zeros(out_h, np.float32), np.zeros(out_w, np.float32)
    for y, r in zip(ys, ramps_y, strict=True):
        total_y[y * scale : min(y * scale + side, out_h)] += r[: min(side, out_h - y * scale)]
    for x, r in zip(xs, ramps_x, strict=True):
        total_x[x * scale : min(x * scale + side, out_w)] += r[: min(side, out_w - x * scale)]
    s_global = None if per_tile_routing else engine.route(router_input(image, engine.router_size))
    keys = [TileCache.key(image.rgb[y : y + tile, x : x + tile]) for y in ys for x in xs]
    batch = 1 if s_global is None else engine.batch
    passes = engine.passes()
    runs = len(keys) * passes + -(-len(set(keys)) // batch)  # every tile per pass, distinct ones last
    budget = budget or TimeBudget(None)
    bar = tqdm(total=len(keys) * (1 + passes), desc="upscale", unit="tile", disable=not progress)

    def scores(lr: np.ndarray) -> np.ndarray:
        return engine.route(router_input_tile(lr, engine.router_size)) if s_global is None else s_global

    def tiles() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        for iy, y in enumerate(ys):
            for ix, x in enumerate(xs):
                lr = _padded_crop(image, y, x, tile)
                yield lr, scores(lr), ownership(ys, xs, iy, ix, tile, h, w)
                bar.update()
                budget.step(runs, "this upscale")

    cache = TileCache()
    ahead: dict[bytes, np.ndarray] = {}  # outputs of tiles that ran in an earlier tile's call

    def output(index: int) -> np.ndarray:
        """Tile `index`'s SR (tile*scale, tile*scale, 3): reused, or run with the next tiles
        that have not run yet (up to a batch)."""
        key = keys[index]
        sr = cache.get(key)
        if sr is not None:
            return sr
        sr = ahead.pop(key, None)
        if sr is None:
            group, chosen = [index], {key}
            for j in range(index + 1, len(keys)):
                if len(group) == batch:
                    break
                if keys[j] not in chosen and keys[j] not in ahead and cache.get(keys[j]) is None:
                    group.append(j)
                    chosen.add(keys[j])
            lr = np.concatenate([_padded_crop(image, ys[j // len(xs)], xs[j % len(xs)], tile) for j in group])
            srs = [np.ascontiguousarray(out.transpose(1, 2, 0)) for out in engine.run(lr, scores(lr))]
            budget.step(runs, "this upscale")
            ahead.update((keys[j], out) for j, out in zip(group[1:], srs[1:], strict=True))
            sr = srs[0]
        cache.put(key, sr)
        return sr

    try:
        engine.prepare(tiles)
        acc = np.zeros((min(side, out_h), out_w, 3), np.float32)
        band_top = 0  # SR row that acc[0] holds
        for iy, y in enumerate(ys):
            top, bottom = y * scale, min(y * scale + side, out_h)
            for ix, x in enumerate(xs):
                sr = output(iy * len(xs) + ix)
                left, right = x * scale, min(x * scale + side, out_w)
                weight = ramps_y[iy][: bottom - top, None] * ramps_x[ix][None, : right - left]
                acc[top - band_top : bottom - band_top, left:right] += (
                    sr[: bottom - top, : right - left] * weight[..., None]
                )
                bar.update()
            done = (ys[iy + 1] * scale if iy + 1 < len(ys) else out_h) - band_top
            if done > 0:
                band = acc[:done]
                band /= total_y[band_top : band_top + done, None, None]
                band /= total_x[None, :, None]
                yield band
                acc[: acc.shape[0] - done] = acc[done:]
                acc[acc.shape[0] - done :] = 0
                band_top += done
    finally:  # the bar's line ends before any error is printed
        bar.close()


def collect(bands: Iterator[np.ndarray]) -> np.ndarray:
    """The whole image from `upscale_tiled`'s bands (copied, as the bands are reused views)."""
    return np.concatenate([band.copy() for band in bands])


def router_input_tile(lr: np.ndarray, size: int) -> np.ndarray:
    """A float tile (1, 3, h, w) resized (antialiased bicubic) to the router's input size
    (per-tile routing); channel by channel in float, as `router_input` does for the image."""
    channels = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(c), mode="F").resize(
                (size, size), Image.Resampling.BICUBIC, reducing_gap=None
            )
        )
        for c in lr[0]
    ]
    return np.clip(np.stack(channels)[None], 0, 1).astype(np.float32)


def upscale_alpha(alpha: np.ndarray, scale: int, dtype: type[np.integer] = np.uint8) -> np.ndarray:
    """Alpha is not image content: plain bicubic resize, no model; `dtype` is the output's."""
    h, w = alpha.shape
    if dtype == np.uint8:
        src = alpha if alpha.dtype == np.uint8 else (alpha >> 8).astype(np.uint8)
        return np.asarray(
            Image.fromarray(src, mode="L").resize((w * scale, h * scale), Image.Resampling.BICUBIC)
        )
    peak = np.iinfo(alpha.dtype).max
    big = Image.fromarray(alpha.astype(np.float32) / peak, mode="F").resize(
        (w * scale, h * scale), Image.Resampling.BICUBIC
    )
    return (np.clip(np.asarray(big), 0, 1) * 65535 + 0.5).astype(np.uint16)
