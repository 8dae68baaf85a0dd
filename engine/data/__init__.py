"""Images and ground truth: class lists, GT decoding, dataset index, batch loader, preprocessing, scenes."""
