"""Meta's SAM3 image model behind the FeatureSource contract.

checkpoint (read and check weights and vocabulary), build (the model, strictly loaded,
on its device), source (batched grounding, reduced on the device), compat (what sam3
needs to run on a CPU-only torch, applied only there).
"""
