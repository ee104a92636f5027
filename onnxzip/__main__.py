"""``python -m onnxzip``: the same as the ``onnxzip`` command."""
import sys

from .cli import main

sys.exit(main())
