"""Outlier smoothing before dynamic int8 quantization (SmoothQuant's idea, taming outlier channels only).

Dynamic quantization gives each MatMul input one int8 scale for the whole tensor, so a few channels that run 10-30
times larger than the rest (BERT's LayerNorm outputs and GELU outputs do) leave the other channels a handful of
int8 steps. Dividing those channels by a factor s and multiplying the matching weight rows by s gives the same fp32
product; the int8 one then spends its range on all channels. The factor per channel is
max(1, range / median range) ** strength, measured on calibration texts: typical channels stay as they are. On the
fine-tuned MiniLM it cut the int8 model's logit error against fp32 by a third (bench/inference.md).

Only the int8 model is smoothed; the shipped fp32 model.onnx stays as exported.
"""
import numpy as np


def activation_ranges(model, batches):
    """{input name: per-channel max |x|} of every MatMul input whose weight is a constant, over `batches` (ONNX
    feeds; where one has an attention_mask, its real tokens alone), run through ONNX Runtime."""
    import onnx
    import onnxruntime

    from transfer.export.onnx_model import onnx_feed, session_options

    names = sorted({node.input[0] for node in weighted_matmuls(model)})
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend([onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                               for name in names])
    session = onnxruntime.InferenceSession(probe.SerializeToString(), session_options(),
                                           providers=["CPUExecutionProvider"])
    ranges = {}
    for batch in batches:
        feed = onnx_feed(session, batch)
        real = np.asarray(batch["attention_mask"], dtype=bool) if "attention_mask" in batch else None
        for name, value in zip(names, session.run(names, feed)):
            on_tokens = real is not None and value.shape[:2] == real.shape
            rows = value[real] if on_tokens else value.reshape(-1, value.shape[-1])
            ranges[name] = np.maximum(ranges.get(name, 0), np.abs(rows).max(axis=0))
    return ranges


def weighted_matmuls(model):
    constants = {t.name for t in model.graph.initializer}
    return [node for node in model.graph.node if node.op_type == "MatMul" and node.input[1] in constants]


def smoothing_factors(channel_range, strength):
    """Per channel: max(1, range / median range) ** strength; 1 for every channel at strength 0."""
    relative = channel_range / max(float(np.median(channel_range)), 1e-12)
    return (np.maximum(1.0, relative) ** strength).astype(np.float32)


def smooth(model, ranges, strength):
    """A copy of `model` in which each MatMul input with outlier channels is divided by its factors (one Mul node,
    shared by the MatMuls that read the input) and those MatMuls' weight rows multiplied by them: the same fp32
    function, with flatter inputs. Returns (model, number of inputs smoothed)."""
    import onnx
    from onnx import helper, numpy_helper

    smoothed = onnx.ModelProto()
    smoothed.CopyFrom(model)
    weights = {t.name: t for t in smoothed.graph.initializer}
    readers, uses = {}, {}
    for node in weighted_matmuls(smoothed):
        readers.setdefault(node.input[0], []).append(node)
    for node in smoothed.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    divide_before = {}  # the first node reading an input -> the Mul that must run before it
    for name, nodes in readers.items():
        factors = smoothing_factors(ranges[name], strength)
        if np.all(factors == 1.0) or any(uses[node.input[1]] > 1 for node in nodes):  # a shared weight stays
            continue
        inverse, flattened = f"{name}_smoothing", f"{name}_smoothed"
        smoothed.graph.initializer.append(numpy_helper.from_array(1.0 / factors, inverse))
        for node in nodes:
            weight = weights[node.input[1]]
            weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * factors[:, None], weight.name))
            node.input[0] = flattened
        divide_before[nodes[0].output[0]] = helper.make_node("Mul", [name, inverse], [flattened], name=f"{name}_smooth")
    order = []
    for node in smoothed.graph.node:  # each Mul just before its input's first reader: still in topological order
        order += [divide_before[node.output[0]], node] if node.output[0] in divide_before else [node]
    del smoothed.graph.node[:]
    smoothed.graph.node.extend(order)
    return smoothed, len(divide_before)
