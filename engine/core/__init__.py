"""The ground floor: configuration, user errors, devices, timing, atomic files, SAM3's geometry.

Everything else in `engine` may import from here; nothing here imports from the rooms above.
"""
