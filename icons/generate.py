#!/usr/bin/env python3
"""Draws every blockops icon: the app icon in the sizes Tauri bundling needs, the tray icons for
each state, and the macOS menu-bar template images.

The mark is an isometric block cut into three stacked slabs: one block, three slots (the proxy's
default concurrency). Everything is drawn as polygons at 8x and downsampled, so edges are
anti-aliased at every size.

    python3 -m venv /tmp/iconvenv && /tmp/iconvenv/bin/pip install pillow
    /tmp/iconvenv/bin/python icons/generate.py        # writes next to this script

Re-running it is deterministic: the same Pillow version writes the same bytes.
"""

from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parent
SS = 8  # supersampling factor

# Faces of the block: top, left, right (light to dark), per palette.
TEAL = ("#7af0de", "#19b5a2", "#0c6f66")
GREY = ("#eef1f5", "#b9c1cc", "#87919f")
AMBER = ("#fde68a", "#f59e0b", "#b45309")
DIM = ("#c9ced6", "#8e96a3", "#646c79")
RED = "#ef4444"
GREEN = "#22c55e"
WHITE = "#ffffff"


def slabs(size, inset=0.0, gap=0.055, count=3):
    """Polygons (in pixels of a `size` square) of the stacked isometric block.

    Returns a list of (face, points), face 0 = top, 1 = left, 2 = right, drawn back to front.
    The block fills the square minus `inset` (a fraction of the size) on every side.
    """
    s = size * (1 - 2 * inset)
    ox = oy = size * inset
    cx = ox + s / 2
    half_w = s * 0.44  # half the block's width
    rise = half_w * 0.577  # tan(30°): isometric slope
    top = oy + s * 0.04
    height = s * 0.92 - 2 * rise  # vertical extent of the side faces
    g = s * gap
    slab_h = (height - g * (count - 1)) / count
    left, right = cx - half_w, cx + half_w
    mid_y = top + rise  # where the left/right corners of the top face sit
    near_y = top + 2 * rise  # the front corner of the top face
    polys = [
        (0, [(cx, top), (right, mid_y), (cx, near_y), (left, mid_y)]),
    ]
    for i in range(count):
        y0 = i * (slab_h + g)
        y1 = y0 + slab_h
        polys.append((1, [(left, mid_y + y0), (cx, near_y + y0), (cx, near_y + y1), (left, mid_y + y1)]))
        polys.append((2, [(cx, near_y + y0), (right, mid_y + y0), (right, mid_y + y1), (cx, near_y + y1)]))
    return polys


def draw_block(draw, size, colors, inset=0.0, gap=0.055):
    for face, pts in slabs(size, inset, gap):
        draw.polygon(pts, fill=colors[face])


def rounded_background(draw, size):
    """macOS-style squircle-ish tile: 824/1024 of the canvas, a vertical dark gradient."""
    margin = size * 100 / 1024
    radius = size * 185 / 1024
    box = [margin, margin, size - margin, size - margin]
    # Gradient: draw horizontal lines clipped by a mask.
    grad = Image.new("RGBA", (size, size))
    gd = ImageDraw.Draw(grad)
    top, bottom = (30, 41, 59), (11, 17, 32)
    for y in range(size):
        t = y / max(size - 1, 1)
        c = tuple(round(a + (b - a) * t) for a, b in zip(top, bottom))
        gd.line([(0, y), (size, y)], fill=c + (255,))
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).rounded_rectangle(box, radius=radius, fill=255)
    return grad, mask


def app_icon(px):
    big = px * SS
    canvas = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    grad, mask = rounded_background(None, big)
    canvas.paste(grad, (0, 0), mask)
    d = ImageDraw.Draw(canvas)
    draw_block(d, big, TEAL, inset=0.22, gap=0.05)
    return canvas.resize((px, px), Image.LANCZOS)


def badge(d, big, color, kind):
    """A round badge at the bottom right: 'dot', 'bang' (!) or 'cross' (x)."""
    r = big * 0.2
    cx, cy = big - r - big * 0.01, big - r - big * 0.01
    ring = r * 1.22  # a transparent ring separates the badge from the block
    d.ellipse([cx - ring, cy - ring, cx + ring, cy + ring], fill=(0, 0, 0, 0))
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
    w = big * 0.055
    if kind == "bang":
        d.rounded_rectangle([cx - w / 2, cy - r * 0.62, cx + w / 2, cy + r * 0.15], radius=w / 2, fill=WHITE)
        d.ellipse([cx - w / 1.6, cy + r * 0.33, cx + w / 1.6, cy + r * 0.33 + w * 1.25], fill=WHITE)
    elif kind == "cross":
        k = r * 0.45
        d.line([(cx - k, cy - k), (cx + k, cy + k)], fill=WHITE, width=round(w))
        d.line([(cx - k, cy + k), (cx + k, cy - k)], fill=WHITE, width=round(w))


def tray_icon(px, state):
    big = px * SS
    img = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    colors = {"idle": GREY, "busy": TEAL, "pressure": AMBER, "down": DIM}[state]
    draw_block(d, big, colors, inset=0.02, gap=0.07)
    if state == "busy":
        badge(d, big, GREEN, "dot")
    elif state == "pressure":
        badge(d, big, "#d97706", "bang")
    elif state == "down":
        badge(d, big, RED, "cross")
    return img.resize((px, px), Image.LANCZOS)


def template_icon(px, state):
    """macOS template image: black plus alpha only; macOS tints it for light and dark menu bars.

    The state shows as shape, since a template has no colour: faces at three alphas for depth,
    plus a punched-out badge (busy: dot, pressure: !, down: x).
    """
    big = px * SS
    alpha = Image.new("L", (big, big), 0)
    d = ImageDraw.Draw(alpha)
    draw_block(d, big, (255, 200, 140), inset=0.02, gap=0.07)
    if state != "idle":
        r = big * 0.24
        cx, cy = big - r, big - r
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=0)  # clear space around the badge
        r2 = r * 0.78
        d.ellipse([cx - r2, cy - r2, cx + r2, cy + r2], fill=255)
        w = big * 0.06
        if state == "pressure":
            d.rounded_rectangle([cx - w / 2, cy - r2 * 0.62, cx + w / 2, cy + r2 * 0.12], radius=w / 2, fill=0)
            d.ellipse([cx - w / 1.6, cy + r2 * 0.3, cx + w / 1.6, cy + r2 * 0.3 + w * 1.25], fill=0)
        elif state == "down":
            k = r2 * 0.45
            d.line([(cx - k, cy - k), (cx + k, cy + k)], fill=0, width=round(w))
            d.line([(cx - k, cy + k), (cx + k, cy - k)], fill=0, width=round(w))
        # busy: the solid dot itself.
    img = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    img.putalpha(alpha)
    return img.resize((px, px), Image.LANCZOS)


def main():
    sizes = {"32x32.png": 32, "64x64.png": 64, "128x128.png": 128, "128x128@2x.png": 256, "icon.png": 512}
    for name, px in sizes.items():
        app_icon(px).save(OUT / name)
    master = app_icon(1024)
    master.save(OUT / "icon.icns", sizes=[(16, 16), (32, 32), (64, 64), (128, 128), (256, 256), (512, 512), (1024, 1024)])
    master.save(OUT / "icon.ico", sizes=[(16, 16), (24, 24), (32, 32), (48, 48), (64, 64), (128, 128), (256, 256)])
    tray = OUT / "tray"
    tray.mkdir(exist_ok=True)
    for state in ("idle", "busy", "pressure", "down"):
        tray_icon(32, state).save(tray / f"{state}.png")
        tray_icon(64, state).save(tray / f"{state}@2x.png")
        # macOS menu bar: 18pt (18 px and 36 px @2x); the file name ends in "Template" by convention.
        template_icon(18, state).save(tray / f"{state}Template.png")
        template_icon(36, state).save(tray / f"{state}Template@2x.png")
    print(f"icons written to {OUT}")


if __name__ == "__main__":
    main()
