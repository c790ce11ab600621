"""Synthetic labelled driving scenes in two styles, for tests and the self-contained demo.

A scene is a small 3-D world along a road (lanes, sidewalks, terrain, buildings, walls, fences,
trees, poles with signs and lights, cars, trucks, buses, people, riders) seen by a pinhole
camera 1.5 m above the road. Every object is painted far to near into the image and, with the
same polygons, into a label map of the 19 Cityscapes train ids. Two renderings of the same
kind of world differ the way game renders and camera frames differ:

* ``game``: flat saturated colours, hard (aliased) edges, no noise.
* ``camera``: muted colours with a colour cast, texture, lens blur, vignetting, sensor noise.

Moving the camera along the road gives a clip (:func:`render_clip`). Deterministic in the seed.
It is a stand-in for GTA5/Cityscapes in tests and demos, not a replacement for real data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

CAMERA_HEIGHT = 1.5
NEAR = 1.5
FAR = 160.0
STYLES = ("game", "camera", "dusk")  # dusk: the camera at nightfall (a shifted condition)

# base colours per train id (RGB): game renders saturate them, the camera style mutes them
BASE_COLOURS = {
    0: (110, 100, 115), 1: (190, 170, 190), 2: (150, 110, 90), 3: (170, 160, 140),
    4: (160, 140, 110), 5: (120, 120, 130), 6: (40, 40, 40), 7: (230, 200, 30),
    8: (60, 140, 40), 9: (140, 190, 90), 10: (110, 170, 240), 11: (200, 60, 70),
    12: (230, 120, 40), 13: (40, 70, 180), 14: (200, 200, 210), 15: (220, 180, 40),
    16: (90, 90, 120), 17: (60, 60, 200), 18: (150, 30, 60),
}  # fmt: skip


@dataclass
class Box:
    """An axis-aligned object standing on the ground: centre x, near z, size, class, colour."""

    x: float
    z: float
    width: float
    height: float
    depth: float
    label: int
    colour: tuple[int, int, int]
    kind: str = "box"  # box, tree, pole, person, vehicle


@dataclass
class World:
    road_half: float
    sidewalk: float
    curve: float
    horizon: float  # fraction of image height
    objects: list[Box] = field(default_factory=list)
    sky: tuple[tuple[int, int, int], tuple[int, int, int]] = ((110, 170, 240), (200, 220, 250))


def _jitter(rng: np.random.Generator, colour, amount: float = 25):
    return tuple(int(np.clip(c + rng.normal(0, amount), 0, 255)) for c in colour)


def make_world(rng: np.random.Generator, length: float = 400.0) -> World:
    """A random street ``length`` metres long."""
    world = World(
        road_half=float(rng.uniform(3.5, 7.0)),
        sidewalk=float(rng.uniform(1.5, 4.0)),
        curve=float(rng.uniform(-0.0015, 0.0015)),
        horizon=float(rng.uniform(0.40, 0.50)),
    )
    world.sky = (_jitter(rng, BASE_COLOURS[10], 20), _jitter(rng, (205, 220, 245), 10))
    edge = world.road_half + world.sidewalk
    for side in (-1, 1):
        _roadside(world, rng, side, edge, length)
        _street_furniture(world, rng, side, length)
    _traffic(world, rng, length)
    return world


def _roadside(
    world: World, rng: np.random.Generator, side: int, edge: float, length: float
) -> None:
    """Buildings along one side, with walls, fences and vegetation in the gaps."""
    z = float(rng.uniform(2, 10))
    while z < length:  # buildings, with walls/fences/vegetation in the gaps
        span = float(rng.uniform(8, 30))
        choice = rng.random()
        setback = float(rng.uniform(1.0, 6.0))
        if choice < 0.6:
            world.objects.append(
                Box(
                    side * (edge + setback + 6),
                    z,
                    12,
                    float(rng.uniform(6, 30)),
                    span,
                    2,
                    _jitter(rng, BASE_COLOURS[2], 40),
                )
            )
        elif choice < 0.75:
            world.objects.append(
                Box(
                    side * (edge + 0.3),
                    z,
                    0.3,
                    float(rng.uniform(0.8, 2.0)),
                    span,
                    int(rng.choice([3, 4])),
                    _jitter(rng, BASE_COLOURS[3]),
                )
            )
        else:
            world.objects.append(
                Box(
                    side * (edge + setback + 2),
                    z,
                    4,
                    float(rng.uniform(3, 9)),
                    span,
                    8,
                    _jitter(rng, BASE_COLOURS[8]),
                    "tree",
                )
            )
        z += span + float(rng.uniform(0, 6))


def _street_furniture(world: World, rng: np.random.Generator, side: int, length: float) -> None:
    """Poles, people, trees and riders on one sidewalk."""
    z = float(rng.uniform(3, 15))
    while z < length:  # street furniture on the sidewalk
        x = side * (world.road_half + float(rng.uniform(0.3, world.sidewalk)))
        roll = rng.random()
        if roll < 0.35:
            world.objects.append(
                Box(
                    x,
                    z,
                    0.2,
                    float(rng.uniform(3.5, 6)),
                    0.2,
                    5,
                    _jitter(rng, BASE_COLOURS[5]),
                    "pole",
                )
            )
        elif roll < 0.7:
            world.objects.append(
                Box(
                    x,
                    z,
                    0.6,
                    float(rng.uniform(1.5, 1.9)),
                    0.4,
                    11,
                    _jitter(rng, BASE_COLOURS[11], 60),
                    "person",
                )
            )
        elif roll < 0.85:
            world.objects.append(
                Box(
                    x,
                    z,
                    2.5,
                    float(rng.uniform(3, 7)),
                    2.5,
                    8,
                    _jitter(rng, BASE_COLOURS[8]),
                    "tree",
                )
            )
        else:
            world.objects.append(
                Box(x, z, 0.6, 1.7, 1.6, 12, _jitter(rng, BASE_COLOURS[12]), "rider")
            )
        z += float(rng.uniform(4, 18))


def _traffic(world: World, rng: np.random.Generator, length: float) -> None:
    """Cars, trucks and buses in the two lanes."""
    z = float(rng.uniform(6, 20))
    while z < length:  # traffic in the lanes
        lane = float(rng.choice([-0.5, 0.5])) * world.road_half
        kind = rng.random()
        label, width, height, depth = (13, 1.8, 1.5, 4.2)
        if kind > 0.85:
            label, width, height, depth = (14, 2.4, 3.2, 7.0)
        elif kind > 0.75:
            label, width, height, depth = (15, 2.5, 3.3, 11.0)
        world.objects.append(
            Box(
                lane + float(rng.uniform(-0.5, 0.5)),
                z,
                width,
                height,
                depth,
                label,
                _jitter(rng, BASE_COLOURS[label], 70),
                "vehicle",
            )
        )
        z += float(rng.uniform(8, 35))


class Camera:
    def __init__(self, width: int, height: int, horizon: float):
        self.width, self.height = width, height
        self.focal = 0.9 * width
        self.cx, self.horizon = width / 2, horizon * height

    def project(self, x: float, y: float, z: float) -> tuple[float, float]:
        """World (x right, y up from the road, z forward) → pixel (u, v)."""
        z = max(z, 1e-3)
        return self.cx + self.focal * x / z, self.horizon + self.focal * (CAMERA_HEIGHT - y) / z


def _ground_strip(world: World, camera: Camera, cam_z: float, x0: float, x1: float) -> np.ndarray:
    points_left, points_right = [], []
    for dz in np.geomspace(NEAR, FAR, 40):
        offset = world.curve * (cam_z + dz) ** 2 - world.curve * cam_z**2
        points_left.append(camera.project(x0 + offset, 0, dz))
        points_right.append(camera.project(x1 + offset, 0, dz))
    return np.array(points_left + points_right[::-1], np.float32)


def _fill(image, label, polygon, colour, class_id, antialias: bool):
    pts = np.round(polygon * 8).astype(np.int32)  # 3 fractional bits
    line = cv2.LINE_AA if antialias else cv2.LINE_8
    cv2.fillPoly(image, [pts], colour, line, shift=3)
    cv2.fillPoly(label, [pts], int(class_id), cv2.LINE_8, shift=3)


def _face(
    camera: Camera,
    z: float,
    left: float,
    right: float,
    bottom: float,
    top: float,
    top_left: float | None = None,
    top_right: float | None = None,
) -> np.ndarray:
    """A face at depth ``z`` facing the camera: its bottom edge from ``left`` to ``right`` at
    height ``bottom``, its top edge at ``top`` (narrower with ``top_left``/``top_right``)."""
    top_left = left if top_left is None else top_left
    top_right = right if top_right is None else top_right
    corners = [
        camera.project(left, bottom, z),
        camera.project(right, bottom, z),
        camera.project(top_right, top, z),
        camera.project(top_left, top, z),
    ]
    return np.array(corners, np.float32)


def _ellipse(camera: Camera, x: float, y: float, z: float, radius: float, squash: float, points):
    """A disc of ``radius`` (in pixels) around the projection of (x, y, z), ``squash`` high."""
    u, v = camera.project(x, y, z)
    angles = np.linspace(0, 2 * np.pi, points, endpoint=False)
    disc = np.stack([u + radius * np.cos(angles), v + squash * radius * np.sin(angles)], 1)
    return disc.astype(np.float32)


def _building(box: Box, camera: Camera, x: float, near: float, dz: float) -> list:
    half = box.width / 2
    inner = x - np.sign(x) * half  # the face towards the road, from near to far
    far = dz + box.depth
    quad = [
        camera.project(inner, 0, near),
        camera.project(inner, box.height, near),
        camera.project(inner, box.height, far),
        camera.project(inner, 0, far),
    ]
    front = _face(camera, near, x - half, x + half, 0, box.height)
    return [(np.array(quad, np.float32), box.label, box.colour), (front, box.label, box.colour)]


def _tree(box: Box, camera: Camera, x: float, near: float) -> list:
    trunk = _face(camera, near, x - 0.15, x + 0.15, 0, box.height * 0.5)
    radius = camera.focal * box.width / 2 / near
    crown = _ellipse(camera, x, box.height * 0.65, near, radius, 0.8, 18)
    return [(trunk, 8, (90, 70, 50)), (crown, 8, box.colour)]


def _pole(box: Box, camera: Camera, x: float, near: float) -> list:
    pole = _face(camera, near, x - 0.08, x + 0.08, 0, box.height)
    sign_label = 7 if (int(box.z * 10) % 3) else 6
    top = box.height - 0.2
    sign = _face(camera, near, x - 0.4, x + 0.4, top - 0.8, top)
    return [(pole, 5, box.colour), (sign, sign_label, BASE_COLOURS[sign_label])]


def _person(box: Box, camera: Camera, x: float, near: float) -> list:
    """A pedestrian, or a rider on a bicycle."""
    shapes = []
    if box.kind == "rider":
        bike = _face(camera, near, x - 0.3, x + 0.3, 0, 0.9)
        shapes.append((bike, 18, BASE_COLOURS[18]))
    base = 0.8 if box.kind == "rider" else 0.0
    shoulders = box.height * 0.8 + base * 0.3
    body = _face(camera, near, x - 0.25, x + 0.25, base, shoulders, x - 0.2, x + 0.2)
    shapes.append((body, box.label, box.colour))
    radius = camera.focal * 0.13 / near
    head = _ellipse(camera, x, box.height * 0.9 + base * 0.3, near, radius, 1.0, 12)
    shapes.append((head, box.label, (230, 190, 160)))
    return shapes


def _vehicle(box: Box, camera: Camera, x: float, near: float) -> list:
    """A car, truck or bus seen from behind: wheels, body, darker rear window."""
    half = box.width / 2
    shapes = []
    for wheel_x in (x - half * 0.7, x + half * 0.7):
        wheel = _face(camera, near, wheel_x - 0.25, wheel_x + 0.25, 0, 0.4)
        shapes.append((wheel, box.label, (25, 25, 25)))
    body = _face(camera, near, x - half, x + half, 0.3, box.height * 0.6)
    shapes.append((body, box.label, box.colour))
    roof = _face(
        camera, near, x - half * 0.8, x + half * 0.8, box.height * 0.6, box.height,
        x - half * 0.7, x + half * 0.7,
    )  # fmt: skip
    window = tuple(int(c * 0.5) for c in box.colour)
    shapes.append((roof, box.label, window))
    return shapes


def _box_polygons(box: Box, world: World, camera: Camera, cam_z: float):
    """Screen polygons (with class and colour) of one object; empty when behind the camera."""
    dz = box.z - cam_z
    if dz + box.depth < NEAR or dz > FAR:
        return []
    near = max(dz, NEAR)
    offset = world.curve * (cam_z + near) ** 2 - world.curve * cam_z**2
    x = box.x + offset
    if box.kind == "box":
        return _building(box, camera, x, near, dz)
    if box.kind == "tree":
        return _tree(box, camera, x, near)
    if box.kind == "pole":
        return _pole(box, camera, x, near)
    if box.kind in ("person", "rider"):
        return _person(box, camera, x, near)
    return _vehicle(box, camera, x, near)


CASTS = {"camera": (12, 8, -6), "dusk": (12, 8, -6)}  # RGB colour cast of each camera style


def _style_colour(colour, style: str, cast: np.ndarray) -> tuple[int, int, int]:
    rgb = np.asarray(colour, np.float32)
    grey = rgb.mean()
    if style == "game":
        rgb = grey + 1.5 * (rgb - grey)  # saturated
    else:
        rgb = (grey + 0.45 * (rgb - grey)) * 0.85 + cast  # muted, colour cast
    return tuple(int(v) for v in np.clip(rgb, 0, 255))


def render_frame(
    world: World, width: int, height: int, cam_z: float, style: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One RGB frame and its train-id label map."""
    if style not in STYLES:
        raise ValueError(f"unknown scene style '{style}' (valid: {', '.join(STYLES)})")
    camera = Camera(width, height, world.horizon)
    antialias = style != "game"
    cast = np.asarray(CASTS.get(style, (0, 0, 0)), np.float32)
    image = np.zeros((height, width, 3), np.uint8)
    label = np.full((height, width), 10, np.uint8)
    top, bottom = (_style_colour(c, style, cast) for c in world.sky)
    ramp = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    image[:] = (np.asarray(top) * (1 - ramp) + np.asarray(bottom) * ramp).astype(np.uint8)
    horizon_v = int(camera.horizon)
    image[horizon_v:] = _style_colour(BASE_COLOURS[9], style, cast)
    label[horizon_v:] = 9
    edge = world.road_half + world.sidewalk
    for x0, x1, class_id in (
        (-edge, -world.road_half, 1),
        (world.road_half, edge, 1),
        (-world.road_half, world.road_half, 0),
    ):
        polygon = _ground_strip(world, camera, cam_z, x0, x1)
        _fill(
            image,
            label,
            polygon,
            _style_colour(BASE_COLOURS[class_id], style, cast),
            class_id,
            antialias,
        )
    for x0 in (-0.08, 0.08):  # centre line (still road)
        polygon = _ground_strip(world, camera, cam_z, x0 - 0.06, x0 + 0.06)
        _fill(image, label, polygon, (235, 235, 225), 0, antialias)
    visible = sorted(world.objects, key=lambda b: -(b.z - cam_z))
    for box in visible:
        for polygon, class_id, colour in _box_polygons(box, world, camera, cam_z):
            _fill(image, label, polygon, _style_colour(colour, style, cast), class_id, antialias)
    if style == "camera":
        image = _camera_effects(image, rng)
    elif style == "dusk":
        image = _dusk_effects(image, rng)
    return image, label


def _camera_effects(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    height, width = image.shape[:2]
    frame = image.astype(np.float32)
    texture = cv2.GaussianBlur(rng.normal(0, 12, (height, width)).astype(np.float32), (0, 0), 2)
    frame += texture[..., None]
    frame = cv2.GaussianBlur(frame, (0, 0), 0.5 + 0.0015 * width)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    radius = ((xs - width / 2) / (width / 2)) ** 2 + ((ys - height / 2) / (height / 2)) ** 2
    frame *= (1 - 0.35 * np.clip(radius, 0, 2) / 2)[..., None]
    frame += rng.normal(0, 4, frame.shape).astype(np.float32)
    return np.clip(frame, 0, 255).astype(np.uint8)


def _dusk_effects(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return at_dusk(_camera_effects(image, rng), rng)


def at_dusk(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An RGB daylight frame (rendered or filmed) at nightfall: a third of the light, a blue
    cast, a flat curve and more sensor noise: what a model adapted to daylight meets at dusk."""
    frame = 18 + 0.32 * image.astype(np.float32) * np.asarray([0.8, 0.9, 1.25], np.float32)
    frame += rng.normal(0, 7, frame.shape).astype(np.float32)
    return np.clip(frame, 0, 255).astype(np.uint8)


def render_scene(seed: int, width: int = 1024, height: int = 512, style: str = "game"):
    """One random scene (image RGB uint8 (H, W, 3), train-id labels uint8 (H, W))."""
    rng = np.random.default_rng(seed)
    world = make_world(rng, length=FAR + 10)
    return render_frame(world, width, height, float(rng.uniform(0, 5)), style, rng)


def render_clip_frames(
    seed: int, frames: int, width: int, height: int, style: str = "camera", speed: float = 0.6
):
    """Frames of a camera driving ``speed`` metres per frame along one street."""
    rng = np.random.default_rng(seed)
    world = make_world(rng, length=FAR + frames * speed + 20)
    for index in range(frames):
        yield render_frame(world, width, height, index * speed, style, rng)
