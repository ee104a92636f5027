"""The lean export against graphsurgeon's own: the same bytes, the graph untouched, and one copy of
the weights made instead of two."""
import graphs
import numpy as np
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper, numpy_helper

from onnxzip.graph.export import export


def test_the_model_is_graphsurgeons_byte_for_byte_and_the_graph_is_left_as_it_was():
    for model in (graphs.resnet(1), graphs.plain_bn(0), graphs.mobilenet(0), graphs.token_block(0)):
        for loaded in (False, True):  # weights still lazily read from the proto, or read into numpy
            graph = gs.import_onnx(model)
            if loaded:
                for t in graph.tensors().values():
                    if isinstance(t, gs.Constant):
                        t.values  # noqa: B018  (reads them)
            for g in (graph, graph.copy()):  # (a copy's constants carry an export dtype)
                want = gs.export_onnx(g, do_type_check=False).SerializeToString()
                assert export(g).SerializeToString() == want
                assert gs.export_onnx(g, do_type_check=False).SerializeToString() == want
    graph = gs.import_onnx(graphs.mlp(0))
    weight = next(t for t in graph.tensors().values() if isinstance(t, gs.Constant) and t.values.ndim == 2)
    graph.outputs.append(weight)  # (a constant that is a graph output: its declared shape is its own)
    assert export(graph).SerializeToString() == gs.export_onnx(graph, do_type_check=False).SerializeToString()


def _hwm_mb() -> float:
    return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024


def test_one_copy_of_the_weights_at_a_time():
    """Peak memory while exporting 160 MB of weights: about one copy more (graphsurgeon's: two)."""
    n = 10
    w = [numpy_helper.from_array(np.full((2000, 2000), i, np.float32), f"w{i}") for i in range(n)]
    nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"y{i - 1}", f"w{i}"], [f"y{i}"]) for i in range(n)]
    model = helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 2000])],
        [helper.make_tensor_value_info(f"y{n - 1}", TensorProto.FLOAT, ["b", 2000])], w))
    del w
    size = n * 2000 * 2000 * 4 / 2**20
    graph = gs.import_onnx(model)
    open("/proc/self/clear_refs", "w").write("5")  # (the peak so far starts again from here)
    before = _hwm_mb()
    out = export(graph)
    assert _hwm_mb() - before < 1.4 * size
    assert numpy_helper.to_array(out.graph.initializer[3])[0, 0] == 3


def test_streamed_pieces_are_the_serialized_bytes():
    """The oracle is protobuf's own serializer, on models with and without initializers and with
    fields after the graph."""
    from onnxzip.graph import stream

    for model in (graphs.resnet(1), graphs.token_block(0), graphs.mlp(0)):
        model.metadata_props.add(key="k", value="v")
        model.graph.doc_string = "after the initializers"
        assert b"".join(stream.pieces(model)) == model.SerializeToString()
    empty = graphs.mlp(0)
    del empty.graph.initializer[:]
    assert b"".join(stream.pieces(empty)) == empty.SerializeToString()
    assert b"".join(stream.pieces(onnx_model_without_graph())) == onnx_model_without_graph().SerializeToString()


def onnx_model_without_graph():
    from onnx import ModelProto
    return ModelProto(ir_version=8, producer_name="x")
