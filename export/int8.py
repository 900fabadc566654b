"""The INT8 path every target shares: float ONNX graph -> float-only nodes -> sensitivity ->
the target's quantizer.

What stays in floating point, always: the router stage (the exporter never quantizes it),
and inside a stage every node that reads a tensor computed from `s` (the gate, TopK and the
gathered LoRA branch of dynamic routing) or that does not depend on the image at all
(constant subgraphs such as the baked-in time embedding), and the decoder's colour step.
On top of that, layer groups are kept in float by policy: `default` keeps each stage's first
and last convolutions (`conv_in`, `conv_out`, the VAE's `quant_conv` and `post_quant_conv`);
`auto` measures every group (stage PSNR with only that group quantized, against the float
graph) and also keeps those below `AUTO_THRESHOLD_DB`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx

from mor_edge.evaluation import psnr

Sample = dict[str, np.ndarray]
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
KEEP_FLOAT_POLICIES = ("default", "auto", "none")
# The first and last convolutions of each stage; the VAE's `quant_conv` and `post_quant_conv`
# are the last of the encoder and the first of the decoder (quantized alone, `quant_conv` cost
# the built-in encoder 27 dB of its stage PSNR, every other group 35 dB or more).
DEFAULT_KEEP_FLOAT = re.compile(r"(^|/)(conv_in|conv_out|quant_conv|post_quant_conv)(/|$)")
# The colour step (a fixed low-pass that sets the output's colours) and the bicubic upsampler
# (constant resize matrices where a target writes it as matmuls) are never quantized.
ALWAYS_FLOAT = re.compile(r"(^|/)(colour|upsampler)(/|$)")
AUTO_THRESHOLD_DB = 40.0


class Quantizer(Protocol):
    """What a target provides for INT8: quantize a float ONNX graph, and run the result."""

    suffix: str  # of the files `quantize_stage` writes

    def quantize_stage(
        self, source: Path, path: Path, samples: list[Sample], float_nodes: set[str]
    ) -> None: ...

    def runner(self, path: Path) -> Callable[[Sample], np.ndarray]: ...


def normalisation_nodes(graph: onnx.GraphProto) -> set[str]:
    """The nodes of every module that takes statistics (a ReduceMean) and has no Conv, MatMul
    or Gemm: a GroupNorm written as reductions (export/group_norm.py). NNCF quantizes such
    elementwise chains when nothing stops it; FakeQuantize on a mean or a variance cost the
    built-in encoder 11 dB of its stage PSNR (18.1 against 29.3 dB, OpenVINO INT8 at the CLI
    defaults)."""
    scopes: dict[str, set[str]] = {}
    for node in graph.node:
        scopes.setdefault(node.name.rpartition("/")[0], set()).add(node.op_type)
    stats = {scope for scope, ops in scopes.items() if "ReduceMean" in ops and not ops & set(QUANTIZED_OPS)}
    return {node.name for node in graph.node if node.name.rpartition("/")[0] in stats}


def float_only_nodes(graph: onnx.GraphProto, routing_inputs: Iterable[str] = ("s",)) -> set[str]:
    """Nodes that must stay in float: those reading a tensor computed from the routing inputs
    alone (gate logits, TopK, gathered or folded LoRA weights), those whose result does not
    depend on any image input (constant subgraphs), and normalisations' statistics."""
    graph_inputs = [i.name for i in graph.input]
    routing = set(routing_inputs) & set(graph_inputs)
    image = set(graph_inputs) - routing
    keep = set()
    for node in graph.node:  # ONNX graphs are topologically sorted
        reads_routing = any(t in routing for t in node.input)
        reads_image = any(t in image for t in node.input)
        if reads_image:
            image.update(node.output)
        elif reads_routing:
            routing.update(node.output)
        if reads_routing or not reads_image or ALWAYS_FLOAT.search(node.name):
            keep.add(node.name)
    return keep | normalisation_nodes(graph)


def layer_group(node_name: str) -> str:
    """A node's layer group: its module path up to three levels (e.g. `unet/mid_block/attentions.0`)."""
    parts = node_name.strip("/").split("/")[:-1] or ["graph"]
    return "/".join(parts[:3])


def quantizable_groups(graph: onnx.GraphProto) -> dict[str, list[str]]:
    """Layer group -> names of its Conv/MatMul/Gemm nodes that may be quantized."""
    fixed = float_only_nodes(graph)
    groups: dict[str, list[str]] = {}
    for node in graph.node:
        if node.op_type in QUANTIZED_OPS and node.name not in fixed:
            groups.setdefault(layer_group(node.name), []).append(node.name)
    return groups


def worst_psnr(
    run: Callable[[Sample], np.ndarray], samples: list[Sample], reference: list[np.ndarray]
) -> float:
    return min(psnr(ref, run(x)) for x, ref in zip(samples, reference, strict=True))


def sensitivity(
    quantizer: Quantizer,
    source: Path,
    samples: list[Sample],
    groups: dict[str, list[str]],
    fixed_float: set[str],
    scratch: Path,
    reference_run: Callable[[Sample], np.ndarray],
) -> list[dict[str, Any]]:
    """Stage PSNR (worst sample, against the float graph) with one layer group quantized at a
    time (`fixed_float` always in float), worst first."""
    reference = [reference_run(x) for x in samples]
    all_nodes = {n for nodes in groups.values() for n in nodes}
    rows = []
    for i, (group, nodes) in enumerate(sorted(groups.items())):
        path = scratch / f"sensitivity-{i}{quantizer.suffix}"
        quantizer.quantize_stage(source, path, samples, float_nodes=fixed_float | (all_nodes - set(nodes)))
        rows.append(
            {
                "group": group,
                "nodes": len(nodes),
                "psnr_db": worst_psnr(quantizer.runner(path), samples, reference),
            }
        )
    return sorted(rows, key=lambda r: r["psnr_db"])


def keep_float_groups(
    policy: str, groups: dict[str, list[str]], rows: list[dict[str, Any]] | None = None
) -> list[str]:
    """Layer groups kept in float under `policy` (`rows`: the sensitivity table, for `auto`)."""
    if policy not in KEEP_FLOAT_POLICIES:
        raise ValueError(f"keep-float policy must be one of {KEEP_FLOAT_POLICIES}")
    if policy == "none":
        return []
    keep = {g for g in groups if DEFAULT_KEEP_FLOAT.search(g)}
    if policy == "auto":
        keep |= {r["group"] for r in rows or [] if r["psnr_db"] < AUTO_THRESHOLD_DB}
    return sorted(keep)


def plan_float_nodes(
    quantizer: Quantizer,
    source: Path,
    samples: list[Sample],
    policy: str,
    scratch: Path,
    reference_run: Callable[[Sample], np.ndarray],
) -> tuple[set[str], dict[str, Any]]:
    """The nodes to keep in float for `source` under `policy`, and a report of the choice."""
    graph = onnx.load(str(source), load_external_data=False).graph
    groups = quantizable_groups(graph)
    fixed = float_only_nodes(graph)
    rows = (
        sensitivity(quantizer, source, samples, groups, fixed, scratch, reference_run)
        if policy == "auto"
        else None
    )
    keep = keep_float_groups(policy, groups, rows)
    nodes = fixed | {n for g in keep for n in groups[g]}
    quantized = sum(len(v) for g, v in groups.items() if g not in keep)
    report: dict[str, Any] = {
        "keep_float_policy": policy,
        "keep_float_groups": keep,
        "quantized_nodes": quantized,
        "float_nodes_of_quantizable_types": sum(
            1 for n in graph.node if n.op_type in QUANTIZED_OPS and n.name in nodes
        ),
    }
    if rows is not None:
        report["sensitivity"] = rows
        report["auto_threshold_db"] = AUTO_THRESHOLD_DB
    return nodes, report
