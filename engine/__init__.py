"""The engine: I/O, devices and orchestration around the pure kernels, in rooms that follow the data.

core -> data -> sources -> analysis -> run -> present: every import points down this list
(tests/test_layout.py checks it). DEVELOPERS.md says which room holds what.
"""
