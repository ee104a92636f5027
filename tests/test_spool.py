import numpy as np
import pytest

from onnxzip.calibrate import spool as spool_mod
from onnxzip.calibrate.spool import Batches, Spool


def test_batches_round_trip_in_memory_and_on_disk():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 3)).astype(np.float32)
    for memory in (1 << 30, 0):  # everything in memory; everything on disk
        with Spool(memory=memory) as sp:
            b = Batches(sp)
            for i in range(0, 10, 4):
                b.append(min(4, 10 - i), {"x": x[i:i + 4]})
            assert b.samples == 10 and len(b) == 3 and "x" in b and "y" not in b
            np.testing.assert_array_equal(b.array("x"), x)
            assert (sp.on_disk > 0) == (memory == 0)
            folder = sp._dir
        assert folder is None or not folder.exists()  # removed on exit


def test_carried_tensors_are_shared_and_files_go_with_their_last_holder():
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    with Spool(memory=0) as sp:
        a = Batches(sp)
        for i in range(0, 6, 3):
            a.append(3, {"x": x[i:i + 3]})
        b = Batches(sp)
        for i in range(len(a)):
            b.append(a.sizes[i], {"y": a.batch(i)["x"] * 2}, {"x": a.raw(i)["x"]})
        assert a.same(b, "x") and not a.same(b, "y")
        paths = [p["x"].path for p in a.parts]
        a.drop()
        assert all(p.exists() for p in paths)  # still held by b
        np.testing.assert_array_equal(b.array("y"), 2 * x)
        b.drop()
        assert not any(p.exists() for p in paths) and sp.on_disk == 0


def test_a_zip_through_disk_equals_the_zip_in_memory(monkeypatch):
    """Spooling to disk changes where batches live, not what is computed."""
    from onnxzip import zip_models
    from tests.conftest import SAMPLES
    models = [SAMPLES / "cnn_digit.onnx", SAMPLES / "cnn_parity.onnx"]
    data = [SAMPLES / "calib_digit.npz", SAMPLES / "calib_parity.npz"]
    ram = zip_models(models, data, share=0.5, quiet=True, batch_size=32)
    monkeypatch.setattr(spool_mod, "SPOOL_MEMORY", 0)
    disk = zip_models(models, data, share=0.5, quiet=True, batch_size=32)
    for a, b in zip(ram.model.graph.initializer, disk.model.graph.initializer):
        np.testing.assert_array_equal(np.frombuffer(a.raw_data, np.uint8), np.frombuffer(b.raw_data, np.uint8))
    assert [t["rel_err"] for t in ram.report["tasks"]] == pytest.approx([t["rel_err"] for t in disk.report["tasks"]])
