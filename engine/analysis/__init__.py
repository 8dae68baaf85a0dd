"""The analysis: one batch (DATR problems -> PCA/KMeans -> metric rows) and the dataset-level clustering."""
