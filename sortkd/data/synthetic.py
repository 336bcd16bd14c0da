"""A generated data set in the exact CIFAR-100 python archive format (demo runs and tests).

Images are 32x32 renderings of class-dependent shapes filled with class-dependent colours and
textures, drawn with random position, size, rotation, colour and background, plus clutter and
pixel noise. Classes come in groups of five that share shape and colour and differ only in their
texture, so siblings are easy to confuse: a small CNN learns most of the set in a few epochs but
keeps erring on part of the training set, where the sort transform has something to act on.

The archive members are ``cifar-100-python/{train,test,meta}``, pickled like the real files
(Python 2 strings, which load as bytes with ``encoding="bytes"``), so the reader under test is
the real one. The archive is byte-identical for a given seed.
"""
from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sortkd.data.cifar import FOLDER_NAME
from sortkd.files import atomic_path

SHAPES = ("disk", "square", "diamond", "ring", "cross", "triangle")
GROUP_SIZE = 5  # sibling classes that share shape and colour
SIZE = 32
_CHUNK = 256  # images rendered at once: float buffers that stay in cache

# Difficulty knobs (tuned so a 2-layer CNN stays clearly below 100 % train accuracy).
CENTER_JITTER = 4.0  # px, uniform +-
RADIUS_JITTER = 0.18  # relative, uniform +-
ANGLE_JITTER = np.deg2rad(14.0)  # texture orientation, uniform +-
FREQ_JITTER = 0.15  # relative, uniform +-
COLOUR_JITTER = 0.18  # per-channel gain, uniform +-
NOISE_STD = 0.07  # pixel noise in [0, 1] units
CLUTTER_PROB = 0.6  # chance of a distracting blob


@dataclass(frozen=True)
class ClassStyles:
    """Per-class drawing parameters, one row per class."""

    shape: np.ndarray  # int [C], index into SHAPES
    radius: np.ndarray  # float [C], px
    colour_a: np.ndarray  # float [C, 3]
    colour_b: np.ndarray  # float [C, 3]
    checker: np.ndarray  # bool [C]: checkerboard instead of stripes
    angle: np.ndarray  # float [C], texture orientation, rad
    freq: np.ndarray  # float [C], texture cycles per shape radius
    group: np.ndarray  # int [C]
    names: list[str]
    group_names: list[str]


def make_class_styles(num_classes: int, rng: np.random.Generator) -> ClassStyles:
    """Draw the class styles: groups share shape, size and palette, members differ by texture."""
    num_groups = -(-num_classes // GROUP_SIZE)
    group_shape = np.arange(num_groups) % len(SHAPES)
    rng.shuffle(group_shape)
    group_radius = rng.uniform(7.0, 10.5, num_groups)
    group_colour = rng.uniform(0.15, 0.95, (num_groups, 3))
    # Texture variants a group chooses from: orientation x frequency x stripes/checker.
    variants = [
        (checker, angle, freq)
        for checker in (False, True)
        for angle in (0.0, 45.0, 90.0, 135.0)
        for freq in (0.9, 1.6)
        if not (checker and angle >= 90.0)  # a checker turned by 90 degrees is the same checker
    ]
    group = np.arange(num_classes) // GROUP_SIZE
    picks = np.concatenate(
        [rng.permutation(len(variants))[:GROUP_SIZE] for _ in range(num_groups)]
    )[:num_classes]
    chosen = [variants[i] for i in picks]
    checker = np.array([v[0] for v in chosen], dtype=bool)
    angle = np.deg2rad(np.array([v[1] for v in chosen]))
    freq = np.array([v[2] for v in chosen])
    colour_a = np.clip(group_colour[group] + rng.uniform(-0.08, 0.08, (num_classes, 3)), 0, 1)
    # The second texture colour is a darker or lighter version of the first.
    shade = rng.choice([0.35, 1.6], size=(num_classes, 1))
    colour_b = np.clip(colour_a * shade + (shade > 1) * 0.1, 0, 1)
    shape = group_shape[group]
    names = [
        f"{SHAPES[s]}_{'checker' if c else 'stripes'}{int(round(np.rad2deg(a)))}_f{f:g}_{i:03d}"
        for i, (s, c, a, f) in enumerate(zip(shape, checker, angle, freq))
    ]
    group_names = [f"group{g:02d}_{SHAPES[group_shape[g]]}" for g in range(num_groups)]
    return ClassStyles(
        shape, group_radius[group], colour_a, colour_b, checker, angle, freq, group,
        names, group_names,
    )


def _shape_distance(shape: np.ndarray, u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Approximate signed distance (px) to each image's shape; negative inside.

    ``shape`` is int [B]; ``r`` is [B, 1, 1]; ``u``, ``v`` are [B, 32, 32] in the shape's frame.
    """
    dist = np.empty_like(u)
    for kind, name in enumerate(SHAPES):
        rows = np.flatnonzero(shape == kind)
        if rows.size:
            dist[rows] = _SHAPE_DISTANCES[name](u[rows], v[rows], r[rows])
    return dist


def _disk(u, v, r):
    return np.sqrt(u * u + v * v) - r


def _square(u, v, r):
    return np.maximum(np.abs(u), np.abs(v)) - 0.85 * r


def _diamond(u, v, r):
    return (np.abs(u) + np.abs(v)) * np.float32(np.sqrt(0.5)) - 0.75 * r


def _ring(u, v, r):
    return np.abs(np.sqrt(u * u + v * v) - 0.7 * r) - 0.32 * r


def _cross(u, v, r):
    au, av = np.abs(u), np.abs(v)
    return np.minimum(np.maximum(au - 0.35 * r, av - r), np.maximum(au - r, av - 0.35 * r))


def _triangle(u, v, r):
    return np.maximum(-v - 0.5 * r, (np.abs(u) * np.float32(np.sqrt(3.0)) + v) * 0.5 - 0.5 * r)


_SHAPE_DISTANCES = {
    "disk": _disk,
    "square": _square,
    "diamond": _diamond,
    "ring": _ring,
    "cross": _cross,
    "triangle": _triangle,
}


@dataclass(frozen=True)
class _ImageDraws:
    """Per-image random choices, drawn for a whole split before rendering."""

    cx: np.ndarray
    cy: np.ndarray
    radius_gain: np.ndarray
    rotation: np.ndarray
    angle_jitter: np.ndarray
    freq_gain: np.ndarray
    colour_gain: np.ndarray  # [N, 3]
    bg_colour: np.ndarray  # [N, 3]
    bg_slope: np.ndarray  # [N, 2, 3] colour change per px along x and y
    clutter: np.ndarray  # [N] bool
    clutter_xy: np.ndarray  # [N, 2]
    clutter_r: np.ndarray
    clutter_colour: np.ndarray  # [N, 3]


def _draw_images(n: int, rng: np.random.Generator) -> _ImageDraws:
    centre = (SIZE - 1) / 2
    return _ImageDraws(
        cx=centre + rng.uniform(-CENTER_JITTER, CENTER_JITTER, n),
        cy=centre + rng.uniform(-CENTER_JITTER, CENTER_JITTER, n),
        radius_gain=1 + rng.uniform(-RADIUS_JITTER, RADIUS_JITTER, n),
        rotation=rng.uniform(-0.35, 0.35, n),
        angle_jitter=rng.uniform(-ANGLE_JITTER, ANGLE_JITTER, n),
        freq_gain=1 + rng.uniform(-FREQ_JITTER, FREQ_JITTER, n),
        colour_gain=1 + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, (n, 3)),
        bg_colour=rng.uniform(0.05, 0.95, (n, 3)),
        bg_slope=rng.uniform(-0.012, 0.012, (n, 2, 3)),
        clutter=rng.random(n) < CLUTTER_PROB,
        clutter_xy=rng.uniform(0, SIZE - 1, (n, 2)),
        clutter_r=rng.uniform(2.5, 5.0, n),
        clutter_colour=rng.uniform(0, 1, (n, 3)),
    )


def render_images(
    labels: np.ndarray, styles: ClassStyles, rng: np.random.Generator
) -> np.ndarray:
    """Render one image per label; returns uint8 [N, 3, 32, 32]."""
    n = labels.shape[0]
    draws = _draw_images(n, rng)
    out = np.empty((n, 3, SIZE, SIZE), dtype=np.uint8)
    grid = np.arange(SIZE, dtype=np.float32)
    xs, ys = grid[None, None, :], grid[None, :, None]
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(start + _CHUNK, n))
        out[sl] = _render_chunk(labels[sl], styles, draws, sl, xs, ys, rng)
    return out


def _col(a: np.ndarray) -> np.ndarray:
    """[B] -> [B, 1, 1] float32, to broadcast against [B, 32, 32]."""
    return a.astype(np.float32)[:, None, None]


def _rgb(a: np.ndarray) -> np.ndarray:
    """[B, 3] -> [B, 3, 1, 1] float32, to broadcast against [B, 3, 32, 32]."""
    return a.astype(np.float32)[:, :, None, None]


def _render_chunk(labels, styles, draws, sl, xs, ys, rng) -> np.ndarray:
    u0, v0 = xs - _col(draws.cx[sl]), ys - _col(draws.cy[sl])
    # Background: a random colour with a linear gradient.
    slope = draws.bg_slope[sl].astype(np.float32)
    background = (
        _rgb(draws.bg_colour[sl])
        + slope[:, 0, :, None, None] * u0[:, None]
        + slope[:, 1, :, None, None] * v0[:, None]
    )
    # Shape mask with anti-aliased edges, in the shape's rotated frame.
    rot = draws.rotation[sl]
    cos, sin = _col(np.cos(rot)), _col(np.sin(rot))
    u, v = u0 * cos + v0 * sin, -u0 * sin + v0 * cos
    radius = _col(styles.radius[labels] * draws.radius_gain[sl])
    dist = _shape_distance(styles.shape[labels], u, v, radius)
    alpha = np.clip(0.5 - dist, 0.0, 1.0)[:, None]
    # Texture: stripes (or a checkerboard) of class orientation and frequency.
    angle = styles.angle[labels] + draws.angle_jitter[sl]
    cycles = _col(styles.freq[labels] * draws.freq_gain[sl]) / radius
    ca, sa = _col(np.cos(angle)), _col(np.sin(angle))
    wave = np.sin(2 * np.pi * cycles * (u0 * ca + v0 * sa))
    cross = np.sin(2 * np.pi * cycles * (-u0 * sa + v0 * ca))
    wave = np.where(_col(styles.checker[labels]).astype(bool), wave * cross * 2.0, wave)
    mix = np.clip(0.5 + 1.5 * wave, 0.0, 1.0)[:, None]
    gain = _rgb(draws.colour_gain[sl])
    colour_a = _rgb(styles.colour_a[labels]) * gain
    colour_b = _rgb(styles.colour_b[labels]) * gain
    foreground = colour_a * (1 - mix) + colour_b * mix
    image = background * (1 - alpha) + foreground * alpha
    # Clutter: a plain blob of random colour, on top, in some images.
    cd = np.sqrt(
        (xs - _col(draws.clutter_xy[sl, 0])) ** 2 + (ys - _col(draws.clutter_xy[sl, 1])) ** 2
    ) - _col(draws.clutter_r[sl])
    blob = (np.clip(0.5 - cd, 0.0, 1.0) * _col(draws.clutter[sl]))[:, None]
    image = image * (1 - blob) + _rgb(draws.clutter_colour[sl]) * blob
    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(NOISE_STD)
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def make_split(
    styles: ClassStyles, per_class: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 3, 32, 32] and labels int64 [N], classes interleaved at random."""
    num_classes = len(styles.names)
    labels = rng.permutation(np.repeat(np.arange(num_classes, dtype=np.int64), per_class))
    return render_images(labels, styles, rng), labels


class _Python2Pickler(pickle._Pickler):
    """Pickle ``bytes`` as Python 2 strings (opcodes SHORT_BINSTRING / BINSTRING).

    The real CIFAR files were written by Python 2, whose strings load as bytes with
    ``encoding="bytes"`` and as str with ``encoding="latin1"`` (what torchvision uses).
    Python 3 bytes would load as bytes under both, so they are written the old way.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def save_python2_string(self, obj: bytes) -> None:
        size = len(obj)
        if size < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([size]))
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", size))
        self.write(obj)
        self.memoize(obj)

    dispatch[bytes] = save_python2_string


def _python2_pickle(obj: dict) -> bytes:
    buffer = io.BytesIO()
    _Python2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def _split_dict(images: np.ndarray, labels: np.ndarray, styles: ClassStyles, batch: str) -> dict:
    return {
        b"filenames": [
            f"{styles.names[y]}_s_{i:06d}.png".encode("ascii") for i, y in enumerate(labels)
        ],
        b"batch_label": batch.encode("ascii"),
        b"fine_labels": [int(y) for y in labels],
        b"coarse_labels": [int(styles.group[y]) for y in labels],
        # R plane, G plane, B plane, each 32x32 row-major: CHW flattened.
        b"data": images.reshape(images.shape[0], -1),
    }


def _add_member(tar: tarfile.TarFile, name: str, data: bytes | None) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = 0  # fixed metadata: the archive is byte-identical for a given seed
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if data is None:
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tar.addfile(info)
    else:
        info.mode = 0o644
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def write_cifar_archive(
    out_tgz: Path,
    num_classes: int = 100,
    train_per_class: int = 500,
    test_per_class: int = 100,
    seed: int = 0,
) -> Path:
    """Write a generated ``cifar-100-python.tar.gz``-format archive to ``out_tgz``."""
    for key, value, low in (
        ("num_classes", num_classes, 2),
        ("train_per_class", train_per_class, 1),
        ("test_per_class", test_per_class, 1),
    ):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{key} must be an integer >= {low}, got {value!r}")
    out_tgz = Path(out_tgz)
    styles = make_class_styles(num_classes, np.random.default_rng([seed, 0]))
    train = make_split(styles, train_per_class, np.random.default_rng([seed, 1]))
    test = make_split(styles, test_per_class, np.random.default_rng([seed, 2]))
    members = {
        "train": _python2_pickle(_split_dict(*train, styles, "training batch 1 of 1")),
        "test": _python2_pickle(_split_dict(*test, styles, "testing batch 1 of 1")),
        "meta": _python2_pickle(
            {
                b"fine_label_names": [name.encode("ascii") for name in styles.names],
                b"coarse_label_names": [name.encode("ascii") for name in styles.group_names],
            }
        ),
    }
    with atomic_path(out_tgz) as tmp:
        with open(tmp, "wb") as raw:
            # filename="" and mtime=0 keep the gzip header free of the name and the time.
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=1, mtime=0) as gz:
                with tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
                    _add_member(tar, FOLDER_NAME, None)
                    for name, data in members.items():
                        _add_member(tar, f"{FOLDER_NAME}/{name}", data)
    return out_tgz
