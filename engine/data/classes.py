"""The class lists of UDD5 and UDD6 and how UDD6 maps onto UDD5 (the engine reports UDD5 classes).

UDD5: 0 Vegetation, 1 Building, 2 Road, 3 Vehicle, 4 Other. UDD6 orders its classes
differently (Other, Facade, Road, Vegetation, Vehicle, Roof) and is mapped onto UDD5
with Facade + Roof -> building. Colours are the releases' display colours (colour PNG
ground truth uses exactly these).
"""

UDD5_CLASSES = ("vegetation", "building", "road", "vehicle", "other")
UDD5_COLOURS = ((107, 142, 35), (102, 102, 156), (128, 64, 128), (0, 0, 142), (0, 0, 0))
UDD6_COLOURS = ((0, 0, 0), (102, 102, 156), (128, 64, 128), (107, 142, 35), (0, 0, 142), (70, 70, 70))  # in UDD6's order: other, facade, road, vegetation, vehicle, roof
UDD6_TO_UDD5 = (4, 1, 2, 0, 3, 1)  # other, facade->building, road, vegetation, vehicle, roof->building
UDD6_ROOF_INDEX = 5
UDD6_ROOF_COLOUR = (70, 70, 70)
