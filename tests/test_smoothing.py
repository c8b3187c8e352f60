"""Outlier smoothing before int8 quantization (transfer/export/smoothing.py), on a hand-built ONNX graph: an input
with two outlier channels read by two MatMuls and by a residual Add, as a BERT LayerNorm output is."""
import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

from transfer.export import onnx_model, smoothing

CHANNELS, OUTLIERS = 32, [3, 17]


def graph_with_outliers():
    rng = np.random.default_rng(0)
    weights = {"w_a": rng.normal(0, 0.2, (CHANNELS, 16)), "w_b": rng.normal(0, 0.2, (CHANNELS, 8)),
               "w_c": rng.normal(0, 0.2, (16, 4))}
    nodes = [helper.make_node("MatMul", ["x", "w_a"], ["a"], name="first"),
             helper.make_node("MatMul", ["x", "w_b"], ["b"], name="second"),
             helper.make_node("Relu", ["a"], ["a_relu"], name="relu"),
             helper.make_node("MatMul", ["a_relu", "w_c"], ["c"], name="third"),
             helper.make_node("Add", ["x", "x"], ["residual"], name="residual")]
    graph = helper.make_graph(
        nodes, "outliers", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", CHANNELS])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["n", width])
         for name, width in (("b", 8), ("c", 4), ("residual", CHANNELS))],
        [numpy_helper.from_array(w.astype(np.float32), name) for name, w in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def inputs(rows, seed):
    x = np.random.default_rng(seed).normal(0, 1, (rows, CHANNELS)).astype(np.float32)
    x[:, OUTLIERS] *= 25  # two channels 25 times the others, as BERT's LayerNorm outputs have
    return x


def run(model, x):
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(["b", "c", "residual"], session.run(None, {"x": x})))


def test_the_ranges_are_measured_per_channel_of_each_matmul_input():
    ranges = smoothing.activation_ranges(graph_with_outliers(), [{"x": inputs(64, 1)}, {"x": inputs(64, 2)}])
    assert set(ranges) == {"x", "a_relu"}  # the inputs of the MatMuls with constant weights, once each
    assert ranges["x"].shape == (CHANNELS,)
    typical = np.delete(ranges["x"], OUTLIERS)
    assert ranges["x"][OUTLIERS].min() > 10 * typical.max()


def test_smoothing_keeps_the_fp32_function_and_flattens_only_the_outlier_channels():
    model, x = graph_with_outliers(), inputs(64, 1)
    ranges = smoothing.activation_ranges(model, [{"x": x}])
    smoothed, count = smoothing.smooth(model, ranges, strength=0.5)
    onnx.checker.check_model(smoothed)  # the Mul sits before its readers: still in topological order
    mul = [node for node in smoothed.graph.node if node.op_type == "Mul"]
    assert count == len(mul) and [node.input[0] for node in mul].count("x") == 1  # one Mul for both readers of x
    mul = [node for node in mul if node.input[0] == "x"]
    readers = {node.name: node.input[0] for node in smoothed.graph.node}
    assert readers["first"] == readers["second"] == mul[0].output[0] and readers["residual"] == "x"
    before, after = run(model, x), run(smoothed, x)
    for name in before:
        np.testing.assert_allclose(after[name], before[name], rtol=1e-5, atol=1e-4)
    factors = 1 / numpy_helper.to_array(next(t for t in smoothed.graph.initializer if t.name == mul[0].input[1]))
    assert np.all(factors[OUTLIERS] > 3) and np.sum(factors > 1.5) == len(OUTLIERS)
    original = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    scaled = {t.name: numpy_helper.to_array(t) for t in smoothed.graph.initializer}
    np.testing.assert_allclose(scaled["w_a"], original["w_a"] * factors[:, None], rtol=1e-6)
    assert smoothing.smooth(model, ranges, strength=0.0)[1] == 0  # strength 0: nothing to divide


def test_smoothed_int8_is_closer_to_fp32_than_plain_int8(tmp_path):
    model = graph_with_outliers()
    plain, smoothed = tmp_path / "plain", tmp_path / "smoothed"
    for folder in (plain, smoothed):
        folder.mkdir()
        onnx.save(model, str(folder / onnx_model.FP32_FILE))
    calibration = [{"x": inputs(128, 1)}]
    onnx_model.quantize_int8(plain, "avx2", True)
    onnx_model.quantize_int8(smoothed, "avx2", True, calibration, 0.5)
    assert not (smoothed / "model_before_int8.onnx").exists()  # the smoothed fp32 graph is a passing step
    assert onnx.load(str(smoothed / onnx_model.FP32_FILE)) == model  # the shipped fp32 model stays as exported
    x = inputs(256, 3)  # other rows than the calibration's
    reference = run(model, x)["b"]
    error = {name: np.sqrt(np.mean((run(onnx.load(str(folder / onnx_model.INT8_FILE)), x)["b"] - reference) ** 2))
             for name, folder in (("plain", plain), ("smoothed", smoothed))}
    assert error["smoothed"] < 0.7 * error["plain"], error
