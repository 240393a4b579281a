"""The shapes world's vocabulary: shapes, palette colours, backgrounds, number words.

Palette colours are saturated and backgrounds are pale (HSV saturation below 0.25, textures
included), so a pixel's saturation alone separates objects from background: that is what lets
the detector (detect.py) stay classical and exact on rendered scenes.
"""

from __future__ import annotations

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")

#: name -> RGB. Saturation >= 0.75 and hues at least 47 degrees apart (red 0, yellow 51, green 134,
#: teal 185, blue 234, purple 284): a small model's colours drift in hue, and the first palette's
#: orange (28 degrees, between red and yellow) came out red in most generated images. Every name
#: is one CLIP BPE token ("cyan" would be two).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (30, 160, 60),
    "blue": (40, 60, 225),
    "yellow": (235, 205, 25),
    "purple": (155, 45, 195),
    "teal": (20, 170, 185),
}

#: name -> RGB of plain backgrounds (all pale: saturation < 0.2).
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "grey": (200, 200, 200),
    "white": (245, 245, 245),
    "sand": (225, 212, 185),
    "sky": (200, 215, 232),
}

#: background styles and their share of scenes
STYLES: tuple[tuple[str, float], ...] = (("plain", 0.5), ("gradient", 0.25), ("dotted", 0.125), ("striped", 0.125))

NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five")


def plural(shape: str) -> str:
    return shape + "s"


def article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def phrase(count: int, color: str, shape: str) -> str:
    """'a red circle', 'a teal star', 'three blue squares'."""
    if count == 1:
        return f"{article(color)} {color} {shape}"
    return f"{NUMBER_WORDS[count]} {color} {plural(shape)}"
