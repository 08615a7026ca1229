"""Surface/material ids of the procedural world: the ground-truth id map's class table.

The id map is structural ground truth: it depends on geometry and on the shader's pattern
(windows, doors, lane markings are painted, not modelled) but never on the condition, except
where structure itself changes between traversals (parked cars, bins) and where winter's bare
trees let the background show through the crowns. Snow and autumn leaves are appearance only:
a snowy lawn keeps the id `lawn`.
"""

from __future__ import annotations

from types import MappingProxyType

SKY = 0
ROAD = 1
MARKING = 2
SIDEWALK = 3
CURB = 4
BUILDING = 5
WINDOW = 6
ROOF = 7
DOOR = 8
POLE = 9
SIGN = 10
FENCE = 11
TRUNK = 12
FOLIAGE = 13
BUSH = 14
LAWN = 15
CAR = 16
CAR_GLASS = 17
BIN = 18
LAMP = 19

#: id -> class name; ids are stored as uint16 in the id maps (PNG) and in rendered frames.
CLASS_NAMES = MappingProxyType({
    SKY: "sky", ROAD: "road", MARKING: "marking", SIDEWALK: "sidewalk", CURB: "curb",
    BUILDING: "building", WINDOW: "window", ROOF: "roof", DOOR: "door", POLE: "pole",
    SIGN: "sign", FENCE: "fence", TRUNK: "trunk", FOLIAGE: "foliage", BUSH: "bush",
    LAWN: "lawn", CAR: "car", CAR_GLASS: "car_glass", BIN: "bin", LAMP: "lamp",
})

#: Ids whose objects may be moved, added or removed between traversals.
DYNAMIC_IDS = (CAR, CAR_GLASS, BIN)
