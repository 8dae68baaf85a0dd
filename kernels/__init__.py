"""Pure batched tensor functions (torch only): pca, kmeans, datr, matching, metrics.

Every function takes batched tensors with a leading problem axis and works on the
device of its inputs. No files, no plotting, no global state.
"""
