"""Photos in: scanning and splitting a collection, decoding, augmentation, the loader's
worker processes and shared batches, the decoded-image cache, archives, class balance and the
synthetic demo data. Imports no training framework."""
