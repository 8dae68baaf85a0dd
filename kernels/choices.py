"""The names of the interchangeable implementations (torch-free, so option parsing stays light)."""

BACKENDS = ("torch", "sklearn", "faiss", "cuml")  # PCA + KMeans backends (kernels.backends)
EIGH_METHODS = ("torch", "cupy", "host")  # batched symmetric eigensolvers (kernels.eigh)
