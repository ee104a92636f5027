"""What the models are: loading, normalization, the IR, channel spaces, alignment, the lint."""

