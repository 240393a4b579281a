"""Versioned stage-1 prompt template: instruction, in-context examples, and how they are rendered.

The template is data, not code, so that a run can record exactly what the LLM was shown:
``Template.fingerprint()`` hashes every piece of text, and a cached layout is only reused when
the fingerprint matches. Changing any wording therefore invalidates the layout cache even if
someone forgets to bump the template id.

Budget: the default layout model has a 2048-token context and may answer with up to ~900
tokens, so instruction plus seven examples must stay around 1000 tokens (~4000 characters).
Examples are kept short for that reason.

Two output formats are supported. JSON (``render_json``) is what structured decoding produces
and is easy to validate; LMD's text format (``render_text``) is what the reference prompts and
caches use, and suits plain completion models that stop on a blank line (``TEXT_STOP``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from lmd_batch.layout.lmd_text import CANVAS, Box, Layout

#: Longest caption we accept; longer ones are cut at a word boundary by repair.
MAX_CAPTION_CHARS = 80
MAX_BACKGROUND_CHARS = 160
MAX_NEGATIVE_CHARS = 120
#: Stop sequence for text-format completions: a rendered layout never contains a blank line.
TEXT_STOP = ["\n\n"]

_INSTRUCTION_V1 = (
    "You plan image layouts for a text-to-image model. Given a caption, place every object it "
    "asks for on a 512x512 canvas. A box is [x, y, w, h]: x and y give its top-left corner, with "
    "[0, 0] the top-left of the canvas and y growing downward; w and h are width and height in "
    "pixels. Give each object instance its own box (three apples means three boxes), keep boxes "
    "inside the canvas, avoid overlaps unless objects touch, and prefer large boxes. Write captions "
    "in English whatever the caption's language, as article, attributes and noun, like "
    "\"a red apple\". Add a short background prompt for the setting and style that repeats no boxed "
    "object; use \"A realistic scene\" when the caption gives no setting. Add a negative prompt "
    "naming what must not appear, or leave it empty; excluded things get no box. When given an "
    "instruction, revise the latest layout: keep every object it does not mention, with the same "
    "box, and change only what it asks."
)

_JSON_FORMAT = (
    'Reply with one JSON object: {"objects": [{"caption": ..., "box": [x, y, w, h]}], '
    '"background": ..., "negative": ...}.'
)
_TEXT_FORMAT = (
    "Reply in the format of the examples: the list [(caption, [x, y, w, h]), ...] on one line, "
    "then a 'Background prompt:' line and a 'Negative prompt:' line."
)
_EDIT_REQUEST = "Instruction: {instruction}. Reply with the whole revised layout."


def _layout(background: str, negative: str, *boxes: tuple) -> Layout:
    return Layout(boxes=[Box(c, *xywh) for c, *xywh in boxes], background=background, negative=negative)


_EXAMPLES_V1: tuple[tuple[str, Layout], ...] = (
    # counts: one box per instance
    ("three apples on a wooden table", _layout(
        "a wooden kitchen table", "",
        ("an apple", 40, 220, 130, 130), ("an apple", 190, 230, 130, 130),
        ("an apple", 340, 220, 130, 130))),
    # attribute binding, default background
    ("a red umbrella and a green backpack", _layout(
        "A realistic scene", "",
        ("a red umbrella", 30, 60, 250, 300), ("a green backpack", 300, 200, 180, 240))),
    # spatial relations: left / right / above
    ("a cat to the left of a dog, with a kite flying above them", _layout(
        "a grassy park on a sunny day", "",
        ("a cat", 30, 280, 190, 200), ("a dog", 270, 250, 210, 230), ("a kite", 190, 20, 130, 140))),
    # negation: the excluded object has no box and goes to the negative prompt
    ("a dog walking down a street without cars", _layout(
        "an empty city street", "cars",
        ("a dog", 150, 230, 220, 230))),
    # art style stays in the background prompt; "below"
    ("a watercolor painting of a fox sitting below a full moon", _layout(
        "a watercolor painting of a snowy hill at night", "",
        ("a full moon", 300, 30, 140, 140), ("a fox", 140, 280, 230, 200))),
    # a scene with several objects
    ("a cozy living room with a gray sofa, two floor lamps and a round rug", _layout(
        "a cozy living room", "",
        ("a floor lamp", 20, 60, 90, 320), ("a gray sofa", 130, 150, 260, 170),
        ("a floor lamp", 410, 60, 90, 320), ("a round rug", 110, 340, 300, 150))),
    # non-English caption, English layout
    ("un gato negro durmiendo junto a una lámpara roja", _layout(
        "a quiet bedroom", "",
        ("a black cat", 60, 270, 260, 180), ("a red lamp", 350, 120, 130, 330))),
)


# The shapes world (lmd_batch/shapes/): the same task, in-context examples in that world's
# language. A small LLM copies the shape of its examples more than it follows the instruction, so
# a domain's own examples are the cheapest way to better layouts (LMD's method is in-context
# learning); none of them is a benchmark prompt (bench/shapes_suite.py draws those from a seed).
_INSTRUCTION_SHAPES_V1 = (
    "You plan image layouts for a text-to-image model that draws coloured shapes (circles, "
    "squares, triangles, stars) on plain or patterned backgrounds. Given a caption, place every "
    "shape it asks for on a 512x512 canvas. A box is [x, y, w, h]: x and y give its top-left "
    "corner, with [0, 0] the top-left of the canvas and y growing downward; w and h are width and "
    "height in pixels. Give each shape its own square box of 100 to 200 pixels (three stars means "
    "three boxes), keep boxes inside the canvas and apart, and put them where the caption says "
    "(on the left of, on the right of, above, below). Write each caption as article, colour and "
    "shape, like \"a red circle\". The background prompt is the caption's background, like \"a "
    "dotted sand background\"; use \"a white background\" when the caption names none. The "
    "negative prompt names the shapes the caption excludes (\"no blue stars\" gives \"blue "
    "stars\"), which get no box; leave it empty otherwise. When given an instruction, revise the "
    "latest layout: keep every shape it does not mention, with the same box, and change only what "
    "it asks."
)

_EXAMPLES_SHAPES_V1: tuple[tuple[str, Layout], ...] = (
    # counts: one box per instance
    ("three yellow triangles on a grey background", _layout(
        "a grey background", "",
        ("a yellow triangle", 40, 60, 150, 150), ("a yellow triangle", 300, 110, 150, 150),
        ("a yellow triangle", 150, 320, 150, 150))),
    # attribute binding: each colour on its own shape
    ("a green square, a red star and a blue circle on a dotted sand background", _layout(
        "a dotted sand background", "",
        ("a green square", 30, 40, 160, 160), ("a red star", 310, 90, 160, 160),
        ("a blue circle", 140, 310, 160, 160))),
    # spatial: on the left of
    ("a purple circle on the left of a teal square on a white background", _layout(
        "a white background", "",
        ("a purple circle", 40, 170, 180, 180), ("a teal square", 300, 150, 180, 180))),
    # negation: the excluded shapes get no box and go to the negative prompt
    ("two blue stars and no red circles on a striped sky background", _layout(
        "a striped sky background", "red circles",
        ("a blue star", 60, 190, 170, 170), ("a blue star", 290, 130, 170, 170))),
    # spatial: below
    ("a teal star below a green triangle on a striped grey background", _layout(
        "a striped grey background", "",
        ("a teal star", 170, 310, 170, 170), ("a green triangle", 190, 40, 170, 170))),
    # five small boxes
    ("five red circles on a sky background", _layout(
        "a sky background", "",
        ("a red circle", 30, 30, 120, 120), ("a red circle", 200, 50, 120, 120),
        ("a red circle", 370, 30, 120, 120), ("a red circle", 100, 300, 120, 120),
        ("a red circle", 300, 330, 120, 120))),
    # non-English caption, English layout
    ("un círculo verde a la derecha de una estrella morada", _layout(
        "a white background", "",
        ("a green circle", 300, 170, 170, 170), ("a purple star", 40, 170, 170, 170))),
)


# --------------------------------------------------------------------------- rendering

def _coord(v):
    """Integral floats print as ints so rendered layouts look like what models write."""
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
        return int(v)
    return v


def _one_line(text: str) -> str:
    """Collapse whitespace: a newline inside a field would break the line-based text format."""
    return " ".join(str(text).split())


def render_json(layout: Layout) -> str:
    """Compact JSON in the schema's shape; raises ValueError on NaN/inf (never valid output)."""
    obj = {
        "objects": [{"caption": b.caption, "box": [_coord(v) for v in b.as_list()]} for b in layout.boxes],
        "background": layout.background,
        "negative": layout.negative,
    }
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def render_text(layout: Layout) -> str:
    """LMD's text format on three lines (no blank line, so ``TEXT_STOP`` ends a completion).

    Captions use Python ``repr`` quoting, which ``lmd_text.parse_layout`` reads back, so a caption
    with quotes or backslashes survives the round trip. Background and negative prompts are put
    on one line each.
    """
    entries = ", ".join(
        f"({b.caption!r}, [{', '.join(repr(_coord(v)) for v in b.as_list())}])" for b in layout.boxes)
    return (f"[{entries}]\nBackground prompt: {_one_line(layout.background)}"
            f"\nNegative prompt: {_one_line(layout.negative)}").rstrip()


def _clean_prompt(prompt: str) -> str:
    """One line, no trailing period (as LMD does): a blank line would end a text completion early."""
    return _one_line(prompt).rstrip(".").strip()


# --------------------------------------------------------------------------- template

@dataclass(frozen=True)
class Template:
    """One versioned prompt template. Every text field takes part in :meth:`fingerprint`."""

    id: str
    instruction: str
    examples: tuple[tuple[str, Layout], ...]
    json_format: str = _JSON_FORMAT
    text_format: str = _TEXT_FORMAT
    edit_request: str = _EDIT_REQUEST

    def render(self, layout: Layout, structured: bool) -> str:
        return render_json(layout) if structured else render_text(layout)

    def system_text(self, structured: bool) -> str:
        return f"{self.instruction} {self.json_format if structured else self.text_format}"

    def chat_messages(self, prompt: str, structured: bool) -> list[dict]:
        """System instruction, the examples as user/assistant turns, then the caption to lay out."""
        messages = [{"role": "system", "content": self.system_text(structured)}]
        for caption, layout in self.examples:
            messages.append({"role": "user", "content": f"Caption: {_clean_prompt(caption)}"})
            messages.append({"role": "assistant", "content": self.render(layout, structured)})
        messages.append({"role": "user", "content": f"Caption: {_clean_prompt(prompt)}"})
        return messages

    def completion_prompt(self, prompt: str, structured: bool) -> str:
        """One raw prompt for /v1/completions, ending in "Layout:" for the model to continue."""
        blocks = [self.system_text(structured)]
        for caption, layout in self.examples:
            blocks.append(f"Caption: {_clean_prompt(caption)}\nLayout: {self.render(layout, structured)}")
        blocks.append(f"Caption: {_clean_prompt(prompt)}\nLayout:")
        return "\n\n".join(blocks)

    def edit_turn(self, instruction: str) -> str:
        """The user text for one editing instruction; store it to replay the turn later."""
        return self.edit_request.format(instruction=_one_line(instruction).rstrip(". "))

    def edit_messages(self, prompt: str, previous: list[tuple[str, Layout]], instruction: str,
                      structured: bool) -> list[dict]:
        """Chat for multi-round editing: the examples, the turns taken so far, then the new instruction.

        ``previous[0]`` is ("Caption: <prompt>", first layout); later items are
        (edit_turn(...), revised layout). The replayed layouts are rendered in the current format,
        so a conversation can be continued in either mode.
        """
        if not previous:
            raise ValueError("edit_messages needs at least the original (caption, layout) turn")
        messages = self.chat_messages(prompt, structured)[:-1]
        for user_text, layout in previous:
            messages.append({"role": "user", "content": user_text})
            messages.append({"role": "assistant", "content": self.render(layout, structured)})
        messages.append({"role": "user", "content": self.edit_turn(instruction)})
        return messages

    def json_schema(self, max_boxes: int) -> dict:
        """JSON schema for structured decoding; bounds keep the worst-case output within max_tokens."""
        box = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": CANVAS},
               "minItems": 4, "maxItems": 4}
        item = {"type": "object",
                "properties": {"caption": {"type": "string", "minLength": 1, "maxLength": MAX_CAPTION_CHARS},
                               "box": box},
                "required": ["caption", "box"], "additionalProperties": False}
        return {"type": "object",
                "properties": {"objects": {"type": "array", "maxItems": max_boxes, "items": item},
                               "background": {"type": "string", "maxLength": MAX_BACKGROUND_CHARS},
                               "negative": {"type": "string", "maxLength": MAX_NEGATIVE_CHARS}},
                "required": ["objects", "background", "negative"], "additionalProperties": False}

    def fingerprint(self) -> str:
        """sha256 of all template text in canonical JSON; part of the layout cache key."""
        payload = {
            "id": self.id,
            "instruction": self.instruction,
            "examples": [[caption, json.loads(render_json(layout))] for caption, layout in self.examples],
            "formats": [self.json_format, self.text_format, self.edit_request],
        }
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


_TEMPLATES = {
    "lmd-batch-v1": Template(id="lmd-batch-v1", instruction=_INSTRUCTION_V1, examples=_EXAMPLES_V1),
    "shapes-v1": Template(id="shapes-v1", instruction=_INSTRUCTION_SHAPES_V1, examples=_EXAMPLES_SHAPES_V1),
}
TEMPLATE_IDS: tuple[str, ...] = tuple(_TEMPLATES)


def get_template(template_id: str) -> Template:
    """The template with this id; a ValueError lists the known ids."""
    try:
        return _TEMPLATES[template_id]
    except (KeyError, TypeError):
        raise ValueError(f"unknown layout template {template_id!r}; known: {', '.join(TEMPLATE_IDS)}") from None
