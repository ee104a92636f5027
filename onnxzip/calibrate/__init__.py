"""What the data says: ONNX Runtime runs, stages, spooled batches, statistics, loss weights."""
