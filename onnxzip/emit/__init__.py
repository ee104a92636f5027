"""The zipped graph: emitting each task's layers and fusing side-by-side ops."""
