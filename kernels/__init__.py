"""Pure batched tensor functions (torch only): pca, eigh, kmeans, datr, matching, metrics, grid, checks.

Every function takes batched tensors with a leading problem axis and works on the
device of its inputs. No files, no plotting, no global state, nothing from `engine`.
`backends/` puts PCA + KMeans behind one interface (torch, sklearn, faiss, cuml);
`choices` names the implementations without importing torch.
"""
