"""What the models are: loading, normalization, the IR, channel spaces, alignment, the lint."""

from onnx_graphsurgeon.logger import G_LOGGER

# onnx-graphsurgeon's own warnings ("colored module is not installed", types it cannot convert) go to
# stdout, past -q: the user sees onnxzip's messages only
G_LOGGER.severity = G_LOGGER.ERROR
