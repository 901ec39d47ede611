"""The LUT training loop and what it needs (batches, data order, checkpoints, metrics), for any stage that trains LUTs."""
