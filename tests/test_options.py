"""onnxzip.options.ZipOptions against hand-built values: a command line parsed by the real parser
(every flag given a non-default value, compared field by field with the Namespace and with values
written here), the exact UsageError message of each bad value, and the report's options dict
written out by hand."""
import dataclasses
import re

import pytest

from onnxzip.cli import build_parser
from onnxzip.errors import UsageError
from onnxzip.options import ZipOptions

#: every ZipOptions field, in declaration order (a new field must be added to these tests)
FIELDS = ["share", "names", "matching", "hessian", "damping", "compensate", "affine", "task_order", "recover", "loss_aware",
          "labels", "finetune", "distill", "cost", "target_params", "max_loss_increase", "separate_inputs", "favor", "device",
          "batch_size", "mask_threshold", "hold_out", "quiet", "image_size", "mean", "std", "bgr", "layout", "max_samples",
          "stat_rows", "offset_basis"]

ARGV = ["zip", "a.onnx", "b.onnx", "--data", "d.npz", "-o", "out.onnx", "--names", "left, right",
        "--share", "0.3,0.2", "--labels", "label", "--finetune", "7", "--distill", "9", "--target-params", "0.6",
        "--max-loss-increase", "0.25", "--cost", "correlation", "--matching", "greedy", "--hessian", "channel",
        "--damping", "0.5", "--no-compensate", "--affine", "--no-loss-aware", "--no-recover", "--task-order", "given",
        "--separate-inputs", "--favor", "speed", "--device", "cuda", "--batch-size", "16",
        "--mask-threshold", "0.3", "--hold-out", "0.3", "--image-size", "32,24", "--mean", "0.1,0.2,0.3", "--std", "2,3,4",
        "--bgr", "--layout", "nhwc", "--max-samples", "99", "--stat-rows", "5000", "-q"]

#: what each flag above means, written out by hand
GIVEN = {"names": ("left", "right"), "matching": "greedy", "hessian": "channel", "damping": 0.5,
         "compensate": False, "affine": True, "task_order": "given", "recover": False, "loss_aware": False, "labels": "label",
         "finetune": 7, "distill": 9, "cost": "correlation", "target_params": 0.6, "max_loss_increase": 0.25,
         "separate_inputs": True, "favor": "speed", "device": "cuda", "batch_size": 16, "mask_threshold": 0.3,
         "hold_out": 0.3, "quiet": True, "image_size": (32, 24), "mean": (0.1, 0.2, 0.3), "std": (2.0, 3.0, 4.0), "bgr": True,
         "layout": "nhwc", "max_samples": 99, "stat_rows": 5000}

#: the documented defaults, written out by hand
DEFAULTS = {"share": 0.5, "names": None, "matching": "optimal", "hessian": "auto", "damping": 1e-2,
            "compensate": True, "affine": False, "task_order": "auto", "recover": True, "loss_aware": True,
            "labels": None, "finetune": 0, "distill": 0, "cost": "mtz", "target_params": None, "max_loss_increase": None,
            "separate_inputs": False, "favor": "size", "device": "cpu", "batch_size": 64, "mask_threshold": 0.5,
            "hold_out": 0.2, "quiet": False, "image_size": None, "mean": (0.0,), "std": (1.0,), "bgr": False, "layout": "nchw",
            "max_samples": 256, "stat_rows": 131072, "offset_basis": True}


def test_the_fields_and_their_defaults():
    assert [f.name for f in dataclasses.fields(ZipOptions)] == FIELDS
    opts = ZipOptions()
    assert {name: getattr(opts, name) for name in FIELDS} == DEFAULTS


def test_from_args_maps_every_flag_to_the_field_of_the_same_name():
    args = build_parser().parse_args(ARGV)
    opts = ZipOptions.from_args(args, share=(0.3, 0.2))
    for name in FIELDS:
        if name == "share":
            assert args.share == "0.3,0.2" and opts.share == (0.3, 0.2)  # given: the parsed --share wins
        elif name == "offset_basis":
            assert not hasattr(args, name) and opts.offset_basis is True  # not a flag: its default
        else:
            assert getattr(opts, name) == getattr(args, name) == GIVEN[name], name
            assert GIVEN[name] != DEFAULTS[name], name  # every flag was moved off its default
    assert set(GIVEN) == set(FIELDS) - {"share", "offset_basis"}


def test_from_args_of_a_bare_command_line_gives_the_defaults():
    args = build_parser().parse_args(["zip", "a.onnx", "b.onnx", "--data", "d.npz", "-o", "out.onnx"])
    assert args.share is None  # (the CLI reads it as "not given": it cannot go with a budget)
    opts = ZipOptions.from_args(args, share=0.5)
    assert {name: getattr(opts, name) for name in FIELDS} == DEFAULTS
    assert opts == ZipOptions()


def test_from_args_ignores_namespace_fields_that_are_not_options_and_keys_given_win():
    args = build_parser().parse_args(["zip", "a.onnx", "--data", "d.npz", "-o", "o.onnx", "--damping", "0.2"])
    opts = ZipOptions.from_args(args, share=0.1, damping=0.7, offset_basis=False)
    assert (opts.share, opts.damping, opts.offset_basis) == (0.1, 0.7, False)
    assert not hasattr(opts, "output") and not hasattr(opts, "models")


def test_a_list_share_becomes_a_tuple():
    opts = ZipOptions(share=[0.5, 0.25, 0.0])
    assert type(opts.share) is tuple and opts.share == (0.5, 0.25, 0.0)
    assert hash(opts) == hash(ZipOptions(share=(0.5, 0.25, 0.0)))  # frozen and hashable
    assert opts == ZipOptions(share=(0.5, 0.25, 0.0))
    assert ZipOptions(share=0.3).share == 0.3
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.share = 0.1


def test_as_report_leaves_out_how_the_zip_runs_and_lists_tuples():
    opts = ZipOptions(share=[0.5, 0.25], names=("a", "b"), image_size=(4, 6), mean=(0.5, 0.25), quiet=True,
                      offset_basis=False, target_params=0.75)
    assert opts.as_report() == {
        "share": [0.5, 0.25], "names": ["a", "b"], "matching": "optimal", "hessian": "auto", "damping": 0.01,
        "compensate": True, "affine": False, "task_order": "auto", "recover": True, "loss_aware": True, "labels": None,
        "finetune": 0, "distill": 0, "cost": "mtz", "target_params": 0.75, "max_loss_increase": None, "separate_inputs": False, "favor": "size",
        "device": "cpu", "batch_size": 64, "mask_threshold": 0.5, "hold_out": 0.2, "image_size": [4, 6], "mean": [0.5, 0.25],
        "std": [1.0], "bgr": False, "layout": "nchw", "max_samples": 256, "stat_rows": 131072}
    report = ZipOptions().as_report()
    assert "quiet" not in report and "offset_basis" not in report and len(report) == len(FIELDS) - 2
    assert report["share"] == 0.5 and report["names"] is None and report["image_size"] is None
    assert type(report["mean"]) is list and type(report["std"]) is list


def test_recipe_carries_the_image_options():
    r = ZipOptions(image_size=(5, 7), mean=(0.1, 0.2, 0.3), std=(2.0,), bgr=True, layout="nhwc",
                   max_samples=9).recipe()
    assert (r.size, r.mean, r.std, r.bgr, r.layout, r.max_samples) == ((5, 7), (0.1, 0.2, 0.3), (2.0,), True, "nhwc", 9)
    assert r.seed == 0  # (not an option: the recipe's own default)


# ------------------------------------------------------------------ check()

@pytest.mark.parametrize("given,message", [
    ({"matching": "hungarian"}, "--matching 'hungarian': choose greedy or index or optimal"),
    ({"hessian": "fisher"}, "--hessian 'fisher': choose auto or channel or exact or identity"),
    ({"cost": "l2"}, "--cost 'l2': choose correlation or mtz"),
    ({"favor": "memory"}, "--favor 'memory': choose size or speed"),
    ({"task_order": "random"}, "--task-order 'random': choose auto or given"),
    ({"damping": -0.5}, "--damping -0.5: must be >= 0"),
    ({"target_params": 0.0}, "--target-params 0.0: give a fraction in (0, 1]"),
    ({"target_params": 1.5}, "--target-params 1.5: give a fraction in (0, 1]"),
    ({"target_params": -0.2}, "--target-params -0.2: give a fraction in (0, 1]"),
    ({"max_loss_increase": -1e-3}, "--max-loss-increase -0.001: must be >= 0"),
    ({"max_samples": 0}, "--max-samples 0: must be >= 1"),
    ({"mask_threshold": 0.0}, "--mask-threshold 0.0: give a value in (0, 1)"),
    ({"distill": -1}, "--distill -1: give a number of steps >= 0"),
    ({"hold_out": 1.0}, "--hold-out 1.0: give a fraction in [0, 1)"),
    ({"hold_out": -0.1}, "--hold-out -0.1: give a fraction in [0, 1)"),
    ({"mask_threshold": 1.0}, "--mask-threshold 1.0: give a value in (0, 1)"),
    ({"mask_threshold": 2}, "--mask-threshold 2: give a value in (0, 1)"),
    ({"batch_size": 0}, "--batch-size 0: must be >= 1"),
    ({"batch_size": -3}, "--batch-size -3: must be >= 1"),
    ({"stat_rows": -1}, "--stat-rows -1: give a number of rows >= 1 (0: every row)"),
    ({"names": ("a", "b", "c")}, "--names gives 3 names for 2 models"),
    ({"names": ("a",)}, "--names gives 1 name for 2 models"),
    ({"names": ("a b", "c")}, "--names: 'a b' is not a valid task name (letters, digits, _ . -)"),
    ({"names": ("ok", "x/y")}, "--names: 'x/y' is not a valid task name (letters, digits, _ . -)"),
    ({"names": ("", "c")}, "--names: '' is not a valid task name (letters, digits, _ . -)"),
    ({"names": ("same", "same")}, "--names: task names must differ"),
])
def test_check_raises_usage_error_with_the_exact_message(given, message):
    with pytest.raises(UsageError, match=re.escape(message)) as caught:
        ZipOptions(**given).check(2)
    assert str(caught.value) == message


@pytest.mark.parametrize("given", [
    {}, {"damping": 0.0}, {"target_params": 1.0}, {"target_params": 1e-9}, {"max_loss_increase": 0.0},
    {"mask_threshold": 0.999}, {"batch_size": 1}, {"names": ("a-1", "B.2_x")},
    {"matching": "index", "hessian": "identity", "cost": "correlation", "favor": "speed", "task_order": "given"},
])
def test_check_accepts_the_edges_of_every_range(given):
    assert ZipOptions(**given).check(2) is None


def test_check_counts_names_against_the_models_given():
    ZipOptions(names=("a", "b", "c")).check(3)
    with pytest.raises(UsageError) as caught:
        ZipOptions(names=("a", "b", "c")).check(4)
    assert str(caught.value) == "--names gives 3 names for 4 models"


def test_check_reports_the_registries_first():
    """Two bad values: the first in the documented order (--matching before --damping) is named."""
    with pytest.raises(UsageError) as caught:
        ZipOptions(matching="x", damping=-1.0).check(2)
    assert str(caught.value) == "--matching 'x': choose greedy or index or optimal"
