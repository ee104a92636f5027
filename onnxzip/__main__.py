"""``python -m onnxzip`` and the ``onnxzip`` command: the command line (:mod:`onnxzip.cli`), whose
imports (onnx, ONNX Runtime) take a second or two: a Ctrl-C then says "interrupted", exit 130."""
import sys


def entry() -> int:
    try:
        from .cli import main
    except KeyboardInterrupt:
        print("onnxzip: interrupted", file=sys.stderr)
        return 130
    return main()


if __name__ == "__main__":
    sys.exit(entry())
