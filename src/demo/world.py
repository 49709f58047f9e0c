"""A procedural visual world for the demo suite: 32×32 scenes of shapes, arrows and digits, with captions.

Every image is drawn from a handful of attributes (scene, object kind, colour, texture, position, size, count), so
the same renderer makes the captioned images that pretrain the demo CLIP and the labelled images of the eight demo
tasks; `restyle` then moves a task's images into its own domain. Rendering is vectorised over a batch with numpy and
depends only on the random generator passed in.
"""
from __future__ import annotations

import numpy as np

SIZE = 32
SHAPES = ["circle", "ring", "square", "frame", "diamond", "cross", "triangle", "bar"]
COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "cyan"]
TEXTURES = ["solid", "striped", "checkered", "dotted", "hatched", "speckled"]
DIRECTIONS = ["up", "up right", "right", "down right", "down", "down left", "left", "up left"]
DIGITS = [str(d) for d in range(10)]
SCENES = ["grass", "sky", "sand", "water", "night", "brick", "snow", "forest"]
POSITIONS = ["top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right"]
COUNTS = ["one", "two", "three", "four", "five"]
SIZES = ["small", "medium", "large"]
KINDS = ["shape", "arrow", "digit"]
MAX_OBJECTS = 5

_RGB = np.array([[220, 40, 40], [40, 180, 60], [40, 80, 230], [235, 215, 40],
                 [150, 50, 190], [245, 140, 30], [245, 245, 245], [40, 220, 220]], dtype=np.float32)
_RADIUS = {"small": (3.5, 5.0), "medium": (6.0, 7.5), "large": (8.5, 11.0)}
# 5×7 bitmap glyphs for the digits 0-9, one string of 35 bits per digit, row by row.
_FONT = np.array([[c == "1" for c in glyph] for glyph in [
    "01110100011001110101110011000101110", "00100011000010000100001000010001110",
    "01110100010000100010001000100011111", "11111000100010000010000011000101110",
    "00010001100101010010111110001000010", "11111100001111000001000011000101110",
    "00110010001000011110100011000101110", "11111000010001000100010000100001000",
    "01110100011000101110100011000101110", "01110100011000101111000010001001100",
]]).reshape(10, 7, 5)


def empty_attributes(n: int) -> dict[str, np.ndarray]:
    """Attribute arrays for n images with no objects; fill them in, then `render`."""
    m = MAX_OBJECTS
    return {
        "scene": np.zeros(n, np.int64), "noise": np.zeros(n, np.float32),
        "present": np.zeros((n, m), bool), "kind": np.zeros((n, m), np.int64),
        "shape": np.zeros((n, m), np.int64), "direction": np.zeros((n, m), np.int64),
        "digit": np.zeros((n, m), np.int64), "color": np.zeros((n, m), np.int64),
        "texture": np.zeros((n, m), np.int64), "cx": np.zeros((n, m), np.float32),
        "cy": np.zeros((n, m), np.float32), "radius": np.zeros((n, m), np.float32),
    }


def render(attrs: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """uint8 images [n, 32, 32, 3]: the scene, then the present objects in slot order, then pixel noise."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    image = _scenes(attrs["scene"], yy, xx, rng)
    for j in range(MAX_OBJECTS):
        rows = np.flatnonzero(attrs["present"][:, j])
        if len(rows) == 0:
            continue
        a = {k: v[rows, j] for k, v in attrs.items() if v.ndim == 2}
        r = a["radius"][:, None, None]
        dx, dy = (xx - a["cx"][:, None, None]) / r, (yy - a["cy"][:, None, None]) / r
        kind = a["kind"][:, None, None]
        mask = np.where(kind == 0, _shape_masks(a["shape"], dx, dy),
                        np.where(kind == 1, _arrow_masks(a["direction"], dx, dy), _digit_masks(a["digit"], dx, dy)))
        pattern = _textures(a["texture"], yy, xx, rng)
        jitter = rng.uniform(0.85, 1.1, size=(len(rows), 1, 1, 3)).astype(np.float32)
        rgb = np.clip(_RGB[a["color"]][:, None, None, :] * jitter, 0, 255)
        fill = np.where(pattern[..., None], rgb, rgb * 0.3)
        image[rows] = np.where(mask[..., None], fill, image[rows])
    image += rng.normal(size=image.shape).astype(np.float32) * attrs["noise"][:, None, None, None]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _shape_masks(shape, dx, dy):
    ax, ay = np.abs(dx), np.abs(dy)
    r = np.sqrt(dx * dx + dy * dy)
    masks = np.stack([
        r < 1.0,
        (r < 1.0) & (r > 0.55),
        np.maximum(ax, ay) < 0.85,
        (np.maximum(ax, ay) < 0.9) & (np.maximum(ax, ay) > 0.55),
        ax + ay < 1.05,
        ((ax < 0.32) & (ay < 1.0)) | ((ay < 0.32) & (ax < 1.0)),
        (dy < 0.8) & (dy > -0.9) & (ax < (dy + 0.9) * 0.6),
        (ax < 1.0) & (ay < 0.35),
    ])
    return np.take_along_axis(masks, shape[None, :, None, None], axis=0)[0]


def _arrow_masks(direction, dx, dy):
    phi = (direction * np.pi / 4)[:, None, None]
    u = dx * np.sin(phi) - dy * np.cos(phi)
    v = dx * np.cos(phi) + dy * np.sin(phi)
    stem = (np.abs(v) < 0.22) & (u > -0.95) & (u < 0.1)
    head = (u >= 0.0) & (u < 0.95) & (np.abs(v) < (0.95 - u) * 0.8)
    return stem | head


def _digit_masks(digit, dx, dy):
    col = np.floor((dx + 0.65) / 1.3 * 5).astype(np.int64)
    row = np.floor((dy + 0.95) / 1.9 * 7).astype(np.int64)
    inside = (col >= 0) & (col < 5) & (row >= 0) & (row < 7)
    return inside & _FONT[digit[:, None, None], np.clip(row, 0, 6), np.clip(col, 0, 4)]


def _textures(texture, yy, xx, rng):
    n = len(texture)
    phase = rng.integers(0, 4, size=(n, 1, 1))
    y, x = yy[None].astype(np.int64) + phase, xx[None].astype(np.int64) + phase
    vertical = rng.random((n, 1, 1)) < 0.5
    patterns = np.stack([
        np.ones((n, SIZE, SIZE), bool),
        np.where(vertical, (x // 2) % 2 == 0, (y // 2) % 2 == 0),
        (x // 2 + y // 2) % 2 == 0,
        ~((x % 3 == 0) & (y % 3 == 0)),
        ((x + y) // 2) % 2 == 0,
        rng.random((n, SIZE, SIZE)) < 0.6,
    ])
    return np.take_along_axis(patterns, texture[None, :, None, None], axis=0)[0]


def _scenes(scene, yy, xx, rng):
    out = np.empty((len(scene), SIZE, SIZE, 3), np.float32)
    y, x = yy[None, :, :, None], xx[None, :, :, None]
    for i in range(len(SCENES)):
        rows = np.flatnonzero(scene == i)
        if len(rows) == 0:
            continue
        grain = rng.normal(size=(len(rows), SIZE, SIZE, 1)).astype(np.float32)
        out[rows] = _SCENE_PAINTERS[i](len(rows), y, x, grain, rng)
    return out


def _brick(n, y, x, grain, rng):
    mortar = (y % 6 == 0) | (((x + 6 * ((y // 6) % 2)) % 12) == 0)
    return np.where(mortar, np.array([200, 190, 180]), np.array([150, 60, 45])) + 6 * grain


def _forest(n, y, x, grain, rng):
    trunks = (x + rng.integers(0, 7, size=(n, 1, 1, 1))) % 7 < 2
    return np.where(trunks, np.array([80, 55, 30]), np.array([20, 70, 30])) + 8 * grain


_SCENE_PAINTERS = [
    lambda n, y, x, g, rng: np.array([50, 120, 40]) + 25 * g,
    lambda n, y, x, g, rng: (np.array([120, 170, 240]) * (1 - y / (SIZE - 1))
                             + np.array([200, 225, 250]) * (y / (SIZE - 1)) + 4 * g),
    lambda n, y, x, g, rng: np.array([210, 185, 130]) + 12 * g,
    lambda n, y, x, g, rng: np.array([30, 70, 150]) + 40 * (((y + 2 * np.sin(x / 3)) // 3) % 2) + 6 * g,
    lambda n, y, x, g, rng: np.where(rng.random((n, SIZE, SIZE, 1)) < 0.04, 230.0, 15.0) + 3 * g,
    _brick,
    lambda n, y, x, g, rng: np.array([230, 232, 238]) + 10 * g,
    _forest,
]


def _luminance(x):
    return np.repeat(x @ np.array([[0.299], [0.587], [0.114]], np.float32), 3, axis=-1)


def _low_resolution(x):
    n = len(x)
    pooled = x.reshape(n, SIZE // 2, 2, SIZE // 2, 2, 3).mean(axis=(2, 4))
    return np.repeat(np.repeat(pooled, 2, axis=1), 2, axis=2)


# Photometric shifts that give a task its own image domain, as SVHN, EuroSAT or MNIST are domains of their own for a
# CLIP pretrained on web photos. Each keeps the attribute its task reads.
STYLES = {
    "none": lambda x: x,
    "grayscale": _luminance,
    "negative": lambda x: 255.0 - x,
    "low_resolution": _low_resolution,
    "dim": lambda x: 0.45 * x + 10.0,
    "swapped_channels": lambda x: x[..., ::-1],
}


def restyle(images: np.ndarray, style: str) -> np.ndarray:
    """uint8 images [n, 32, 32, 3] in one of the `STYLES` domains."""
    out = STYLES[style](images.astype(np.float32))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def sample(n: int, rng: np.random.Generator, *, objects=(1, 1), single: float = 0.0, kinds=(0.7, 0.15, 0.15),
           sizes=SIZES, scenes=None, noise=(0.0, 8.0)) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Random attributes for n images, and their labels (attributes of the first object, scene, count).

    The object count is uniform in `objects`, except that a share `single` of the images holds one object.

    Objects sit in distinct cells of a 3×3 grid (jittered), so positions and counts are well defined.
    """
    attrs = empty_attributes(n)
    attrs["scene"] = rng.choice(scenes if scenes is not None else len(SCENES), size=n)
    attrs["noise"] = rng.uniform(*noise, size=n).astype(np.float32)
    count = np.where(rng.random(n) < single, 1, rng.integers(objects[0], objects[1] + 1, size=n))
    cells = np.argsort(rng.random((n, 9)), axis=1)[:, :MAX_OBJECTS]
    m = MAX_OBJECTS
    attrs["present"] = np.arange(m)[None, :] < count[:, None]
    attrs["kind"] = rng.choice(3, size=(n, m), p=kinds)
    attrs["shape"] = rng.integers(0, len(SHAPES), size=(n, m))
    attrs["direction"] = rng.integers(0, len(DIRECTIONS), size=(n, m))
    attrs["digit"] = rng.integers(0, len(DIGITS), size=(n, m))
    attrs["color"] = rng.integers(0, len(COLORS), size=(n, m))
    attrs["texture"] = rng.integers(0, len(TEXTURES), size=(n, m))
    size = rng.choice([SIZES.index(s) for s in sizes], size=(n, m))
    # Several objects must fit in their cells; a lone object may be any size.
    size = np.where(count[:, None] > 1, np.minimum(size, 0), size)
    lo = np.array([_RADIUS[s][0] for s in SIZES])[size]
    hi = np.array([_RADIUS[s][1] for s in SIZES])[size]
    attrs["radius"] = rng.uniform(lo, hi).astype(np.float32)
    jitter = np.where(count[:, None] > 1, 1.0, 2.0)
    attrs["cx"] = (6 + 10 * (cells % 3) + rng.uniform(-1, 1, (n, m)) * jitter).astype(np.float32)
    attrs["cy"] = (6 + 10 * (cells // 3) + rng.uniform(-1, 1, (n, m)) * jitter).astype(np.float32)
    # A lone object in the centre cell may be large; keep every object inside the frame.
    for axis in ("cx", "cy"):
        attrs[axis] = np.clip(attrs[axis], attrs["radius"], SIZE - 1 - attrs["radius"])
    labels = {"scene": attrs["scene"], "count": count - 1, "position": cells[:, 0], "size": size[:, 0]}
    labels.update({k: attrs[k][:, 0] for k in ("kind", "shape", "direction", "digit", "color", "texture")})
    return attrs, labels


def captions(attrs: dict[str, np.ndarray], labels: dict[str, np.ndarray], rng: np.random.Generator,
             p_mention: float = 0.7) -> list[str]:
    """One caption per image, mentioning a random subset of its attributes (as web alt-texts do)."""
    out = []
    for i in range(len(attrs["scene"])):
        def maybe(p=p_mention):
            return rng.random() < p

        count = labels["count"][i] + 1
        kind = labels["kind"][i]
        if kind == 0:
            noun = SHAPES[labels["shape"][i]]
        elif kind == 1:
            noun = "arrow" + (f" pointing {DIRECTIONS[labels['direction'][i]]}" if maybe(0.9) else "")
        else:
            noun = f"number {DIGITS[labels['digit'][i]]}" if maybe(0.9) else "digit"
        words = [w for w, keep in ((SIZES[labels["size"][i]], maybe(0.3)), (COLORS[labels["color"][i]], maybe()),
                                   (TEXTURES[labels["texture"][i]], maybe())) if keep]
        text = " ".join(["a", *words, noun])
        if count > 1:
            text = f"{COUNTS[count - 1]} objects" + (f" with {text}" if maybe() else "")
        elif maybe():
            text += f" in the {POSITIONS[labels['position'][i]]}"
        if maybe():
            text += f" on a {SCENES[labels['scene'][i]]} background"
        if maybe(0.3):
            text = "a photo of " + text
        out.append(text)
    return out
