"""Batched scene sampling and rendering in torch (CPU or GPU), deterministic from a torch.Generator.

A scene is a fixed-width table of up to MAX_OBJECTS objects, each a unique (colour, shape) pair, with a
size class, a half-extent in pixels and a centre; `present` marks the rows that are drawn. Rendering
evaluates one signed distance field per object and alpha-composites objects in row order (later rows
on top), so overlaps are well defined. Everything is vectorised over the batch: a batch of 1024 scenes
renders in milliseconds on a GPU, so data generation never stalls training.
"""

import math
from dataclasses import dataclass

import torch

from .vocab import COLOR_RGB, COLORS, SHAPES

IMAGE_SIZE = 112
PATCH = 8
GRID = IMAGE_SIZE // PATCH
MAX_OBJECTS = 6
NUM_COMBOS = len(COLORS) * len(SHAPES)
# Half-extents in pixels: small objects span at least 16 px (2x2 patches), large ones about 28 px.
SMALL_RADIUS = (8.5, 10.0)
LARGE_RADIUS = (13.5, 15.5)


@dataclass
class Scenes:
    color: torch.Tensor    # long [N, K]
    shape: torch.Tensor    # long [N, K]
    size: torch.Tensor     # long [N, K] 0 small, 1 large
    radius: torch.Tensor   # float [N, K] half-extent in pixels
    cx: torch.Tensor       # float [N, K] centre x in pixels (0 = left edge)
    cy: torch.Tensor       # float [N, K] centre y in pixels (0 = top edge)
    present: torch.Tensor  # bool [N, K]

    def __len__(self):
        return self.color.shape[0]

    def index(self, rows):
        return Scenes(*(getattr(self, f)[rows] for f in self.__dataclass_fields__))

    def repeat(self, times):
        return Scenes(*(getattr(self, f).repeat_interleave(times, dim=0) for f in self.__dataclass_fields__))


def _uniform(shape, lo, hi, gen, device):
    return lo + (hi - lo) * torch.rand(shape, generator=gen, device=device)


def sample_scenes(n, gen, device="cpu", min_objects=2, max_objects=MAX_OBJECTS, candidates=24):
    """Sample n scenes. Placement is sequential rejection over `candidates` positions per object;
    about a third of the scenes allow partial overlap (centres closer than the sum of extents)."""
    K = MAX_OBJECTS
    count = torch.randint(min_objects, max_objects + 1, (n,), generator=gen, device=device)
    combo = torch.rand(n, NUM_COMBOS, generator=gen, device=device).argsort(dim=1)[:, :K]
    color = combo // len(SHAPES)
    shape = combo % len(SHAPES)
    size = torch.randint(0, 2, (n, K), generator=gen, device=device)
    radius = torch.where(
        size == 1,
        _uniform((n, K), *LARGE_RADIUS, gen, device),
        _uniform((n, K), *SMALL_RADIUS, gen, device),
    )
    overlapping = torch.rand(n, generator=gen, device=device) < 0.35
    separation = torch.where(overlapping, torch.full_like(radius[:, 0], 0.72), torch.full_like(radius[:, 0], 1.05))

    cx = torch.zeros(n, K, device=device)
    cy = torch.zeros(n, K, device=device)
    present = torch.zeros(n, K, dtype=torch.bool, device=device)
    for k in range(K):
        r = radius[:, k : k + 1]
        span = IMAGE_SIZE - 2 * (r + 1)
        px = r + 1 + span * torch.rand(n, candidates, generator=gen, device=device)
        py = r + 1 + span * torch.rand(n, candidates, generator=gen, device=device)
        ok = torch.ones(n, candidates, dtype=torch.bool, device=device)
        for j in range(k):
            dist = torch.sqrt((px - cx[:, j : j + 1]) ** 2 + (py - cy[:, j : j + 1]) ** 2)
            need = separation[:, None] * (r + radius[:, j : j + 1])
            ok &= (~present[:, j : j + 1]) | (dist >= need)
        pick = ok.to(torch.uint8).argmax(dim=1, keepdim=True)  # first valid candidate
        cx[:, k] = px.gather(1, pick)[:, 0]
        cy[:, k] = py.gather(1, pick)[:, 0]
        present[:, k] = ok.any(dim=1) & (k < count)
    return Scenes(color, shape, size, radius, cx, cy, present)


def _box_sdf(dx, dy, hx, hy):
    qx = dx.abs() - hx
    qy = dy.abs() - hy
    outside = torch.sqrt(qx.clamp(min=0) ** 2 + qy.clamp(min=0) ** 2)
    inside = torch.maximum(qx, qy).clamp(max=0)
    return outside + inside


def shape_sdf(shape, dx, dy, r):
    """Signed distance (pixels, negative inside) of every shape class; picks `shape` per object.
    dx, dy: [N, ...] offsets from the centre; shape, r: [N] broadcast against them."""
    extra = (1,) * (dx.dim() - 1)
    r = r.view(-1, *extra)
    circle = torch.sqrt(dx * dx + dy * dy) - r
    square = _box_sdf(dx, dy, 0.95 * r, 0.95 * r)
    # Equilateral triangle pointing up (image y grows downwards), centroid at the centre.
    h = 0.62 * r
    triangle = torch.maximum(torch.maximum(dy - h, 0.866 * dx - 0.5 * dy - h), -0.866 * dx - 0.5 * dy - h)
    diamond = (dx.abs() + dy.abs() - 1.1 * r) * 0.7071
    cross = torch.minimum(_box_sdf(dx, dy, r, 0.36 * r), _box_sdf(dx, dy, 0.36 * r, r))
    all_shapes = torch.stack([circle, square, triangle, diamond, cross], dim=1)
    index = shape.view(-1, 1, *extra).expand(-1, 1, *all_shapes.shape[2:])
    return all_shapes.gather(1, index)[:, 0]


def _background(n, gen, device):
    """Low-entropy textures: a tinted grey with one faint pattern (gradient, stripes, checker, waves)."""
    coords = torch.arange(IMAGE_SIZE, device=device, dtype=torch.float32) + 0.5
    y = coords.view(1, -1, 1)
    x = coords.view(1, 1, -1)
    u = lambda lo, hi: _uniform((n, 1, 1), lo, hi, gen, device)  # noqa: E731
    theta = u(0, math.pi)
    along = x * torch.cos(theta) + y * torch.sin(theta)
    gradient = along / IMAGE_SIZE * 2 - 1
    stripes = torch.sin(2 * math.pi * along / u(6, 24) + u(0, 2 * math.pi))
    cell = u(6, 20)
    checker = torch.sign(torch.sin(math.pi * x / cell + 0.01) * torch.sin(math.pi * y / cell + 0.01))
    theta2 = u(0, math.pi)
    along2 = x * torch.cos(theta2) + y * torch.sin(theta2)
    waves = 0.5 * (torch.sin(2 * math.pi * along / u(30, 80)) + torch.sin(2 * math.pi * along2 / u(30, 80)))
    patterns = torch.stack([gradient, stripes, checker, waves], dim=1)  # [n, 4, H, W]
    kind = torch.randint(0, 4, (n,), generator=gen, device=device)
    pattern = patterns.gather(1, kind.view(n, 1, 1, 1).expand(-1, 1, IMAGE_SIZE, IMAGE_SIZE))[:, 0]
    amplitude = u(0.02, 0.07)
    grey = _uniform((n, 1, 1, 1), 0.3, 0.8, gen, device)
    tint = _uniform((n, 3, 1, 1), -0.05, 0.05, gen, device)
    return (grey + tint + amplitude[:, None] * pattern[:, None]).clamp(0, 1)


def render(scenes, gen, device="cpu"):
    """Render scenes to float images [N, 3, 112, 112] in [0, 1] (already on the 8-bit grid)."""
    n = len(scenes)
    image = _background(n, gen, device)
    palette = torch.tensor(COLOR_RGB, dtype=torch.float32, device=device) / 255.0
    coords = torch.arange(IMAGE_SIZE, device=device, dtype=torch.float32) + 0.5
    for k in range(MAX_OBJECTS):
        dx = coords.view(1, 1, -1) - scenes.cx[:, k].view(-1, 1, 1)
        dy = coords.view(1, -1, 1) - scenes.cy[:, k].view(-1, 1, 1)
        sdf = shape_sdf(scenes.shape[:, k], dx, dy, scenes.radius[:, k])
        alpha = (0.5 - sdf).clamp(0, 1) * scenes.present[:, k].view(-1, 1, 1).float()
        rgb = palette[scenes.color[:, k]] + _uniform((n, 3), -0.04, 0.04, gen, device)
        image = image * (1 - alpha[:, None]) + rgb.clamp(0, 1).view(n, 3, 1, 1) * alpha[:, None]
    return torch.round(image * 255) / 255


def _topmost_at_centres(scenes):
    """Index of the topmost object covering each patch centre, -1 for background ([N, 196], row-major
    like the patch tokens): later objects are drawn over earlier ones."""
    n = len(scenes)
    device = scenes.cx.device
    centres = torch.arange(GRID, device=device, dtype=torch.float32) * PATCH + PATCH / 2
    top = torch.full((n, GRID, GRID), -1, dtype=torch.long, device=device)
    for k in range(MAX_OBJECTS):
        dx = centres.view(1, 1, -1) - scenes.cx[:, k].view(-1, 1, 1)
        dy = centres.view(1, -1, 1) - scenes.cy[:, k].view(-1, 1, 1)
        inside = (shape_sdf(scenes.shape[:, k], dx, dy, scenes.radius[:, k]) < 0) & scenes.present[:, k].view(-1, 1, 1)
        top = torch.where(inside, torch.full_like(top, k), top)
    return top.view(n, -1)


def _label_at(top, per_object):
    """per_object [N, K] (long) + 1 at each patch's topmost object, 0 for background."""
    value = per_object.long().gather(1, top.clamp(min=0)) + 1
    return torch.where(top >= 0, value, torch.zeros_like(value))


def patch_centre_labels(scenes):
    """Per-patch targets at patch centres: colour+1 and shape+1 of the topmost object covering the
    centre, 0 for background ([N, 196] each, row-major like the patch tokens)."""
    top = _topmost_at_centres(scenes)
    return _label_at(top, scenes.color), _label_at(top, scenes.shape)


def patch_object_labels(scenes):
    """Per-patch targets of the topmost object covering each patch centre, 0 for background ([N, 196]
    each): size+1, and the grid row+1 / column+1 of the object's centre. They make every object patch
    carry its object's size and place, so a subset of an object's patches still describes it."""
    top = _topmost_at_centres(scenes)
    cell = lambda c: (c // PATCH).clamp(0, GRID - 1)  # noqa: E731
    return _label_at(top, scenes.size), _label_at(top, cell(scenes.cy)), _label_at(top, cell(scenes.cx))


def patch_coverage(scenes):
    """Fraction of each patch's pixels that objects cover, [N, 196] (for the CLS attention check)."""
    n = len(scenes)
    device = scenes.cx.device
    coords = torch.arange(IMAGE_SIZE, device=device, dtype=torch.float32) + 0.5
    uncovered = torch.ones(n, IMAGE_SIZE, IMAGE_SIZE, device=device)
    for k in range(MAX_OBJECTS):
        dx = coords.view(1, 1, -1) - scenes.cx[:, k].view(-1, 1, 1)
        dy = coords.view(1, -1, 1) - scenes.cy[:, k].view(-1, 1, 1)
        alpha = (0.5 - shape_sdf(scenes.shape[:, k], dx, dy, scenes.radius[:, k])).clamp(0, 1)
        uncovered = uncovered * (1 - alpha * scenes.present[:, k].view(-1, 1, 1).float())
    coverage = torch.nn.functional.avg_pool2d((1 - uncovered)[:, None], PATCH)[:, 0]
    return coverage.reshape(n, -1)


def contents(scenes):
    """Multi-label scene contents for the CLS objective: [N, colours*shapes*sizes] in {0, 1}."""
    n = len(scenes)
    index = (scenes.color * len(SHAPES) + scenes.shape) * 2 + scenes.size
    target = torch.zeros(n, NUM_COMBOS * 2, device=scenes.cx.device)
    target.scatter_add_(1, index, scenes.present.float())
    return target.clamp(max=1)


def augment(images, gen):
    """Training-time robustness to codecs: faint sensor noise, sometimes 4:2:0-style chroma blur (what
    JPEG does to colour), then back onto the 8-bit grid."""
    n = images.shape[0]
    device = images.device
    r, g, b = images[:, 0], images[:, 1], images[:, 2]
    yy = 0.299 * r + 0.587 * g + 0.114 * b
    cb = b - yy
    cr = r - yy
    blur = torch.rand(n, generator=gen, device=device) < 0.3
    pooled = lambda c: torch.nn.functional.interpolate(  # noqa: E731
        torch.nn.functional.avg_pool2d(c[:, None], 2), scale_factor=2, mode="nearest")[:, 0]
    sel = blur.view(n, 1, 1)
    cb = torch.where(sel, pooled(cb), cb)
    cr = torch.where(sel, pooled(cr), cr)
    r2 = yy + cr
    b2 = yy + cb
    g2 = (yy - 0.299 * r2 - 0.114 * b2) / 0.587
    out = torch.stack([r2, g2, b2], dim=1)
    sigma = _uniform((n, 1, 1, 1), 0.0, 0.015, gen, device)
    out = out + sigma * torch.randn(out.shape, generator=gen, device=device)
    return torch.round(out.clamp(0, 1) * 255) / 255
