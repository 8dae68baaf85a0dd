"""The SAM3 image model's fixed sizes, shared by the loader, the sources, the analysis and the figures."""

MODEL_SIDE = 1008  # input side: SAM3's processor squashes every image to 1008 x 1008
TOKEN_GRID = 72  # the encoder's token grid side (72 x 72 = 5184 tokens); 1008 / 14
MASK_GRID = 288  # the mask head's output side (4 x the token grid)
NUM_QUERIES = 200  # decoder queries per (image, prompt)
FEATURE_DIM = 256  # channels of the features and of the queries
