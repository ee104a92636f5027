"""``onnxzip zip / finetune / inspect / eval / report / bench / demo``: argparse -> ZipOptions -> the API."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import NoReturn

from . import __version__, images
from .api import accuracy_of, finetune_model, zip_models, zipped_tasks
from .calibrate import runtime
from .calibrate.stats import HESSIANS
from .emit.layers import FORMS
from .errors import InputError, MismatchError, OnnxzipError, UsageError
from .graph import io
from .graph.align import align
from .graph.attention import describe_blocks, find_attention
from .graph.normalize import onnx_opset
from .images import ImageRecipe
from .options import ZipOptions
from .report.files import report_kind, write_report
from .report.records import ZipReport
from .report.terminal import distill_lines, format_table
from .sharing.layout import group_name
from .sharing.match import COSTS, ORDERS
from .sharing.assign import MATCHERS
from .sharing.plan import parse_share
from .tasks import load_tasks, task_names

DEFAULTS = ZipOptions()


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(","))


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give numbers separated by commas") from None


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give H,W (two integers)") from None
    return h, w


def _add_image_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("image folders as --data (PNG/JPEG, read recursively)")
    g.add_argument("--image-size", type=_size, default=DEFAULTS.image_size, metavar="H,W",
                   help="resize every image to H,W (default: the model input's static size)")
    g.add_argument("--mean", type=_floats, default=DEFAULTS.mean, metavar="C1,C2,C3",
                   help="subtracted per channel of the model's input from [0, 1] pixels, after --bgr (so B,G,R "
                        "with --bgr; one value or one per channel)")
    g.add_argument("--std", type=_floats, default=DEFAULTS.std, metavar="C1,C2,C3",
                   help="then divided per channel, in the same order (one value or one per channel)")
    g.add_argument("--bgr", action="store_true", help="reverse RGB to BGR (models trained on OpenCV reads)")
    g.add_argument("--layout", choices=["nchw", "nhwc"], default=DEFAULTS.layout, help="the model input's layout")
    g.add_argument("--max-samples", type=int, default=DEFAULTS.max_samples,
                   help="at most this many images per folder, a seeded random subset (image folders only; .npz "
                        f"data is used whole) (default {DEFAULTS.max_samples})")


def _add_zip_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--share", default=None,
                   help="fraction of each hidden layer's neurons to share, or one per layer group (see "
                        f"'onnxzip inspect'): 0.5,0.5,0.25 (default {DEFAULTS.share})")
    p.add_argument("--labels", default=DEFAULTS.labels,
                   help="key of integer class labels in every --data file: the empirical Fisher for costs, "
                        "and what --finetune trains on")
    p.add_argument("--finetune", type=int, default=DEFAULTS.finetune, metavar="STEPS",
                   help="after zipping, retrain lightly for STEPS Adam steps on the labelled --data")
    p.add_argument("--distill", type=int, default=DEFAULTS.distill, metavar="STEPS",
                   help="after zipping, tune for up to STEPS Adam steps to reproduce the original models (no "
                        "labels; stopped early on the held-out samples); budgets distil before loosening")
    p.add_argument("--target-params", type=float, default=DEFAULTS.target_params,
                   help="automatic budgets: keep at most this fraction of the originals' layer parameters, "
                        "sharing where the predicted loss per parameter saved is lowest (instead of --share)")
    p.add_argument("--max-loss-increase", type=float, default=DEFAULTS.max_loss_increase,
                   help="automatic budgets: share the cheapest neurons while the output loss increase "
                        "measured on the held-out samples (per sample, summed over tasks; KL in nats for "
                        "class scores, half the squared error elsewhere) stays within this")
    p.add_argument("--cost", choices=COSTS.names(), default=DEFAULTS.cost,
                   help="pairing cost: MTZ's Hessian costs, or output correlation on shared samples "
                        "(ZipIt!-style baseline)")
    p.add_argument("--matching", choices=MATCHERS.names(), default=DEFAULTS.matching,
                   help="neuron matching: optimal assignment, the paper's greedy, or index (no matching)")
    p.add_argument("--hessian", choices=HESSIANS.names(), default=DEFAULTS.hessian,
                   help="conv statistic: exact patch covariance where small, else per-channel (auto), always per-channel "
                        "(the paper's), always exact, or identity (Euclidean matching)")
    p.add_argument("--damping", type=float, default=DEFAULTS.damping,
                   help=f"Hessian damping, relative to its mean diagonal (default {DEFAULTS.damping})")
    p.add_argument("--no-compensate", dest="compensate", action="store_false",
                   help="the paper's rule: keep a shared neuron's weights on private inputs unchanged instead of "
                        "re-solving them (Schur complement)")
    p.add_argument("--affine", action="store_true",
                   help="after each shared block of a dense-statistic layer, each task keeps a per-channel scale "
                        "and shift (two numbers per shared neuron and task), solved in closed form")
    p.add_argument("--no-loss-aware", dest="loss_aware", action="store_false",
                   help="costs in pre-activation units (the paper's) instead of weighting each neuron by its "
                        "loss-gradient statistic (label-free Fisher, through ONNX Runtime)")
    p.add_argument("--no-recover", dest="recover", action="store_false",
                   help="do not refit layers and heads to reproduce the original pre-activations (the paper's "
                        "targets: the original weights)")
    p.add_argument("--task-order", choices=ORDERS.names(), default=DEFAULTS.task_order,
                   help="with 3+ models: try every starting pair and keep the cheapest (auto), or merge in the "
                        "order given")
    p.add_argument("--separate-inputs", action="store_true", help="one input per task even when they agree")
    p.add_argument("--favor", choices=FORMS.names(), default=DEFAULTS.favor,
                   help="partly shared layers: store each shared block once, run as blocks plus Adds (size), or "
                        "run one op per task, storing the shared block in each task (speed)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=DEFAULTS.device, help="ONNX Runtime device")
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size, help="calibration batch size")
    p.add_argument("--stat-rows", type=int, default=DEFAULTS.stat_rows, metavar="N",
                   help="each layer's statistics read at most N rows (samples x positions or tokens; a seeded "
                        "subset), or 256 per weight column where the layer needs more; 0: every row "
                        f"(default {DEFAULTS.stat_rows})")
    p.add_argument("--hold-out", type=float, default=DEFAULTS.hold_out, metavar="FRACTION",
                   help="the fraction of each task's calibration samples (seeded) that the zip is judged on and "
                        f"not fitted to; 0: fit to all, no verdict (default {DEFAULTS.hold_out})")
    p.add_argument("--mask-threshold", type=float, default=DEFAULTS.mask_threshold,
                   help="detector scores and probability maps are compared as masks above this value "
                        f"(default {DEFAULTS.mask_threshold})")


def cmd_zip(args: argparse.Namespace) -> int:
    io.check_output_path(args.output, args.models + args.data)
    _onnx_name(args.output)
    if args.report:
        io.check_output_path(args.report, args.models + args.data, "--report", [args.output])
        if report_kind(args.report) == "page":
            from .report.page import _pyplot
            _pyplot()  # before the work: a missing matplotlib is said now, not after the zip
    if args.share is not None and (args.target_params is not None or args.max_loss_increase is not None):
        raise UsageError("give --share or a budget (--target-params / --max-loss-increase), not both")
    opts = ZipOptions.from_args(args, share=DEFAULTS.share if args.share is None else parse_share(args.share))
    opts.check(len(args.models))  # (before any loading)
    _unused_image_options(args)
    result = zip_models(args.models, args.data, opts)
    result.save(args.output)
    if args.report:
        write_report(result.summary, args.report)
    if not args.quiet:
        print(format_table(result.summary))
        print(f"wrote {args.output} (outputs: {', '.join(o.name for o in result.model.graph.output)})")
        if args.report:
            print(f"wrote the report to {args.report} ({report_kind(args.report)})")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    io.check_output_path(args.output, [args.model] + args.data)
    _onnx_name(args.output)
    if args.steps < 1:  # (finetune_model's message names zip's --finetune)
        raise UsageError(f"--steps {args.steps}: give a number of steps >= 1")
    model = io.load_model(args.model)
    zipped_tasks(model, args.model)  # (a model that is not zipped: named)
    model = finetune_model(model, args.data, labels=args.labels, steps=args.steps, lr=args.lr,
                           batch=args.batch_size, device=args.device, quiet=args.quiet)
    io.save_model(model, args.output)
    if not args.quiet:
        print(f"wrote {args.output} ({args.steps} steps)")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from .api import distill_model
    io.check_output_path(args.output, [args.model] + args.originals + args.data)
    _onnx_name(args.output)
    opts = ZipOptions.from_args(args)
    _unused_image_options(args)
    model = io.load_model(args.model)
    zipped_tasks(model, args.model)  # (a model that is not zipped: named)
    model, record, after = distill_model(model, args.originals, args.data, opts)
    io.save_model(model, args.output)
    if not args.quiet:
        print("\n".join(distill_lines(record, after)))
        print(f"wrote {args.output}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    protos, irs, _ = load_tasks(args.models, task_names(args.models, None))
    for proto, ir in zip(protos, irs):
        converted = f" (read as opset {ir.opset})" if ir.opset != onnx_opset(proto) else ""
        def dims(s) -> tuple:  # (a size the file names, such as batch or seq, by its name)
            named = ir.declared_inputs.get(s.name, ())
            return tuple(named[a] if a < len(named) and isinstance(named[a], str) else "?" if d is None else d
                         for a, d in enumerate(s.shape))
        print(f"{ir.source}: opset {onnx_opset(proto)}{converted}, inputs "
              + ", ".join(f"{s.name} {dims(s)}" for s in ir.inputs))
        width = max([28] + [len(layer.name) for layer in ir.layers])
        print(f"  {'layer':<{width}} {'kind':<9} {'shape':<20} {'neurons':>8}  role")
        for i, layer in enumerate(ir.layers):
            role = "hidden (zippable)" if i in ir.hidden else "head (private)"
            print(f"  {layer.name:<{width}} {layer.kind:<9} {str(layer.shape):<20} {layer.neurons:>8}  {role}")
    spaces = irs[0].spaces
    print("layer groups, in --share list order (tied layers share one matching): "
          + "; ".join(f"{g}: {group_name(irs[0], m)}" for g, m in enumerate(spaces.groups)))
    layers = irs[0].layers
    if spaces.followers:
        print("depthwise layers following their input's matching: "
              + ", ".join(layers[i].name for i in spaces.followers))
    if spaces.restore:
        print("restored to each task's channel order before: " + ", ".join(sorted(spaces.restore)))
    for line in describe_blocks(irs[0], find_attention(irs[0]), ties=True):
        print(f"attention: {line}")
    if len(irs) < 2:
        return 0
    try:
        align(irs)
    except MismatchError as exc:
        print(f"NOT aligned: {exc}")
        return 1
    print(f"aligned: same architecture, {len(irs[0].hidden)} zippable hidden layers")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    arrays = io.load_arrays(args.data)
    inputs = {i.name.split("/")[-1] for i in io.load_model(args.model, external=False).graph.input}
    if args.labels in inputs:
        raise InputError(f"{args.data}: --labels {args.labels!r} names an input of the model, not its labels "
                         f"(the file has: {', '.join(sorted(arrays))})")
    if args.labels not in arrays:
        raise InputError(f"{args.data}: no labels key {args.labels!r} (keys: {', '.join(sorted(arrays))})")
    labels = arrays.pop(args.labels)
    acc = accuracy_of(args.model, arrays, labels, args.output, args.device, source=args.data)
    print(f"{args.model} {args.output}: top-1 accuracy {acc:.4f} on {len(labels)} samples")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_budget, run_demo, run_detectors, run_three, samples_dir
    samples = samples_dir(args.samples)
    print(f"onnxzip demo: zipping the sample pairs in {samples} (tasks: digit 10-way, parity 2-way)")
    opts = ZipOptions(quiet=True, device=args.device)
    print(f"{'model':<6} {'share':>6} {'params kept':>12} {'digit acc':>16} {'parity acc':>16} {'seconds':>8}")
    for row in run_demo(samples, options=opts):
        acc, orig = row["accuracy"], row["original"]
        print(f"{row['arch']:<6} {row['share']:>6.2f} {row['params_kept']:>12.1%} "
              f"{acc['digit']:>7.4f} ({orig['digit']:.4f}) {acc['parity']:>7.4f} ({orig['parity']:.4f}) "
              f"{row['seconds']:>8.2f}")
    row = run_three(samples, options=opts)
    print(f"three CNNs in one model (share {row['share']:.2f}, {row['params_kept']:.1%} of the parameters kept): "
          + ", ".join(f"{t} {a:.4f} ({row['original'][t]:.4f})" for t, a in row["accuracy"].items()))
    row = run_budget(samples, options=opts)
    print(f"budget: {row['arch']} pair under --target-params {row['target']}: {row['params_kept']:.1%} kept, shared neurons "
          f"per layer {row['counts']}: " + ", ".join(f"{t} {a:.4f}" for t, a in row["accuracy"].items()))
    row = run_budget(samples, target=0.75, arch="vit", options=opts)
    print(f"two vision transformers under --target-params {row['target']}: {row['params_kept']:.1%} kept: "
          + ", ".join(f"{t} {a:.4f} ({row['original'][t]:.4f})" for t, a in row["accuracy"].items()))
    row = run_detectors(samples, options=opts)
    print(f"three LayerNorm detectors (batch 1) under --target-params {row['target']}: {row['params_kept']:.1%} kept: "
          + ", ".join(f"{t} {a:.4f} ({row['original'][t]:.4f})" for t, a in row["accuracy"].items()))
    print("accuracy on the held-out test images; originals in parentheses")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import json
    io.check_output_path(args.output, [args.report])
    report_kind(args.output, "-o")
    try:
        with open(args.report, encoding="utf-8") as f:
            report = json.load(f)
    except (OSError, ValueError) as exc:
        raise InputError(f"{args.report}: cannot read the JSON report ({exc})") from None
    if not isinstance(report, dict) or not report.get("tasks"):
        raise InputError(f"{args.report}: not an onnxzip report (no 'tasks', or none listed)")
    try:
        write_report(ZipReport.from_dict(report), args.output)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise InputError(f"{args.report}: not a complete onnxzip report ({type(exc).__name__}: {exc})") from None
    if not args.quiet:
        print(f"wrote {args.output}")
    return 0


def _onnx_name(output: str) -> None:
    """Say where a model is written under a name that does not end in .onnx (it is written anyway)."""
    if not str(output).lower().endswith(".onnx"):
        logging.getLogger("onnxzip").warning("-o %s: an ONNX model is written there (the name does not end in .onnx)",
                                             output)


def _unused_image_options(args: argparse.Namespace) -> None:
    """Warn that image options given go unused where no --data is an image folder."""
    asked = [f for f, v, d in (("--image-size", args.image_size, None), ("--mean", tuple(args.mean), (0.0,)),
                               ("--std", tuple(args.std), (1.0,)), ("--bgr", args.bgr, False),
                               ("--layout", args.layout, "nchw"),
                               ("--max-samples", getattr(args, "max_samples", DEFAULTS.max_samples), DEFAULTS.max_samples))
             if v != d]
    if asked and not any(images.is_image_folder(d) for d in args.data or []):
        logging.getLogger("onnxzip").warning("%s: for image folders as --data only; the arrays given are used as they are",
                                             ", ".join(asked))


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import bench, bench_data, format_bench
    if any(min(size) < 1 for size in args.sizes or []):
        raise UsageError(f"--sizes {' '.join(f'{h},{w}' for h, w in args.sizes)}: give positive H,W")
    size = args.image_size or (args.sizes[0] if args.sizes else None)  # (images read at the first size asked)
    _unused_image_options(args)
    recipe = ImageRecipe(size, tuple(args.mean), tuple(args.std), args.bgr, args.layout, args.max_samples)
    data = bench_data(args.data, args.originals, recipe)
    for i, size in enumerate(args.sizes or [None]):
        say = None if args.quiet else (lambda m: print(f"onnxzip bench: {m}", file=sys.stderr, flush=True))
        result = bench(args.model, args.originals, data, provider=args.provider, batch=args.batch, runs=args.runs,
                       size=size, say=say)
        print(("\n" if i else "") + format_bench(result), flush=True)
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's one-line errors: ``onnxzip: error: ...`` and exit code 2 (``--help``
    shows the usage)."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.split()[1:]
        self.exit(2, f"onnxzip: error: {' '.join(command) + ': ' if command else ''}{message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="onnxzip", description="Zip same-architecture ONNX models into one "
                                     "multi-task model with Multi-Task Zipping.")
    parser.add_argument("--version", action="version", version=f"onnxzip {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    _add_zip_command(sub)
    _add_model_commands(sub)
    _add_output_commands(sub)

    for p in sub.choices.values():
        talk = p.add_mutually_exclusive_group()  # (-q -v together: refused, not one silently winning)
        talk.add_argument("-q", "--quiet", action="store_true", help="no progress or summary")
        talk.add_argument("-v", "--verbose", action="store_true", help="log each layer")
    return parser


def _add_zip_command(sub) -> None:
    p = sub.add_parser("zip", help="zip models into one multi-task ONNX model")
    p.add_argument("models", nargs="+", help="ONNX models of the same architecture (one per task)")
    p.add_argument("--data", nargs="+", required=True,
                   help="calibration data per model, or one for all: .npz (keys = input names), .npy, or a folder "
                        "of images (see below)")
    p.add_argument("-o", "--output", required=True, help="the zipped model to write")
    p.add_argument("--names", type=_names, default=DEFAULTS.names, help="task names, comma-separated")
    p.add_argument("--report", help="write the report here: one self-contained HTML page with plots for .html "
                                    "(needs matplotlib), JSON for .json (any other suffix is refused)")
    _add_zip_options(p)
    _add_image_options(p)
    p.set_defaults(func=cmd_zip)


def _add_model_commands(sub) -> None:
    """finetune, inspect, eval."""
    p = sub.add_parser("finetune", help="retrain a zipped model lightly on labelled data (one file per task)")
    p.add_argument("model", help="a zipped model (outputs <task>/<name>)")
    p.add_argument("--data", nargs="+", required=True, help="per task, in the model's task order: .npz with "
                   "its inputs and labels")
    p.add_argument("--labels", default="label", help="labels key in the .npz files (default: label)")
    p.add_argument("-o", "--output", required=True, help="the retrained model to write")
    p.add_argument("--steps", type=int, default=200, help="Adam steps (default 200)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate (default 0.001)")
    p.add_argument("--batch-size", type=int, default=32, help="samples per step and task (default 32)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where ONNX Runtime runs (default cpu)")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("distill", help="tune a zipped model to reproduce its original models (no labels)")
    p.add_argument("model", help="a zipped model (outputs <task>/<name>)")
    p.add_argument("--originals", nargs="+", required=True, help="the original models, in the zipped model's task order")
    p.add_argument("--data", nargs="+", required=True, help="calibration inputs per original, or one for all "
                   "(.npz, .npy or a folder of images)")
    p.add_argument("-o", "--output", required=True, help="the tuned model (written atomically)")
    p.add_argument("--steps", dest="distill", type=int, default=500, metavar="STEPS",
                   help="at most this many Adam steps (default 500)")
    p.add_argument("--hold-out", type=float, default=DEFAULTS.hold_out, metavar="FRACTION",
                   help=f"samples (seeded) held out to stop early and judge on (default {DEFAULTS.hold_out})")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where ONNX Runtime runs (default cpu)")
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size, help="batch size of the originals' runs")
    p.add_argument("--mask-threshold", type=float, default=DEFAULTS.mask_threshold,
                   help="detector scores and probability maps are compared as masks above this value "
                        f"(default {DEFAULTS.mask_threshold})")
    _add_image_options(p)
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("inspect", help="show layers and whether the models align")
    p.add_argument("models", nargs="+", help="ONNX models (one, or several to check they align)")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("eval", help="top-1 accuracy of one output on labelled data")
    p.add_argument("model", help="an ONNX model, zipped or not")
    p.add_argument("--data", required=True, help=".npz with the inputs and a labels array")
    p.add_argument("--labels", default="label", help="labels key in the .npz (default: label)")
    p.add_argument("--output", required=True, help="output name, e.g. digit/logits")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.set_defaults(func=cmd_eval)


def _add_output_commands(sub) -> None:
    """report, bench, demo."""
    p = sub.add_parser("report", help="render a JSON report as one self-contained HTML page")
    p.add_argument("report", help="a report written by 'onnxzip zip --report r.json'")
    p.add_argument("-o", "--output", required=True, help="the page to write (.html), or the report again as JSON (.json)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("bench", help="latency, session memory and bytes of a zipped model against its originals")
    p.add_argument("model", help="a zipped model (outputs <task>/<name>)")
    p.add_argument("--originals", nargs="+", required=True, help="the original models, in the zipped model's task order")
    p.add_argument("--data", nargs="+", help=".npz inputs or an image folder per original, or one for all (default: "
                                             "random inputs)")
    p.add_argument("--provider", choices=list(runtime.PROVIDERS), default="cpu",
                   help="ONNX Runtime execution provider; a silent fall-back to CPU is refused")
    p.add_argument("--batch", type=int, default=32, help="samples per run (default 32)")
    p.add_argument("--runs", type=int, default=50, help="timed runs of each side (default 50)")
    p.add_argument("--sizes", nargs="+", type=_size, metavar="H,W",
                   help="bench at each of these input sizes (the models' open height and width; --data resampled)")
    _add_image_options(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("demo", help="zip the shipped sample models at several sharing levels")
    p.add_argument("--samples", help="samples folder (default: the checkout's samples/)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.set_defaults(func=cmd_demo)


class Terminated(BaseException):
    """SIGTERM arrived (a BaseException, as KeyboardInterrupt: no ``except Exception`` swallows it)."""


def _terminated(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    from onnx_graphsurgeon.logger import G_LOGGER
    # onnx-graphsurgeon's own warnings ("colored module is not installed", types it cannot convert) go to
    # stdout, past -q: a user of the command sees onnxzip's messages only
    G_LOGGER.severity = G_LOGGER.ERROR
    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():  # (SIGTERM, as timeout and CI send it: the
        # same clean-up as Ctrl-C, temporary spools removed, exit 143)
        signal.signal(signal.SIGTERM, _terminated)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="onnxzip: %(message)s")
    try:
        return args.func(args)
    except OnnxzipError as exc:
        print(f"onnxzip: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader of our output went away (| head): not an error of ours
        sys.stderr.close()
        return 0
    except MemoryError:
        print("onnxzip: error: out of memory (a smaller --batch-size, --max-samples or --image-size needs less)",
              file=sys.stderr)
        return 2
    except Terminated:
        print("onnxzip: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:  # outputs are written atomically: nothing partial is left
        print("onnxzip: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
