"""Graph preparation: load NIR, inline nested graphs, order nodes topologically.

Pure functions on ``(nodes, edges)``; the executor and the chip mapper share them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import nir

from spkdiff.errors import SpkdiffError
from spkdiff.neuromorphic.nir_graph import check_graph_finite


class Passthrough(nir.NIRNode):
    """Identity node that replaces the Input/Output nodes of an inlined subgraph."""

    def __init__(self) -> None:  # NIRNode forbids its own default constructor
        self.metadata = {}
        self.input_type = {"input": None}
        self.output_type = {"output": None}


@dataclass
class FlatGraph:
    """A graph without nested subgraphs: nodes in execution order, predecessor/successor lists."""

    nodes: dict[str, nir.NIRNode]
    order: list[str]
    preds: dict[str, list[str]] = field(default_factory=dict)
    succs: dict[str, list[str]] = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)

    @property
    def inputs(self) -> list[str]:
        return [n for n in self.order if isinstance(self.nodes[n], nir.Input)]

    @property
    def outputs(self) -> list[str]:
        return [n for n in self.order if isinstance(self.nodes[n], nir.Output)]


def load_graph(graph: nir.NIRGraph | str | Path) -> nir.NIRGraph:
    """Return ``graph`` itself, or read it from a NIR (HDF5) file."""
    if isinstance(graph, nir.NIRGraph):
        return graph
    path = Path(graph)
    if not path.is_file():
        raise SpkdiffError(f"NIR file not found: {path}")
    try:
        loaded = nir.read(str(path))
    except Exception as err:  # h5py/nir raise many types for a foreign or truncated file
        raise SpkdiffError(f"cannot read NIR graph from {path}: {str(err) or type(err).__name__}") from err
    check_graph_finite(loaded, f"NIR graph {path}")
    return loaded


def _endpoint(sub: nir.NIRGraph, prefix: str, ref: str | None, want: type) -> str:
    """Resolve an edge end that points at subgraph ``prefix`` (``sub`` or ``sub.node``)."""
    if ref is not None:
        return f"{prefix}.{ref}"
    candidates = [k for k, n in sub.nodes.items() if isinstance(n, want)]
    if len(candidates) != 1:
        kind = "input" if want is nir.Input else "output"
        raise SpkdiffError(f"edge to subgraph '{prefix}' is ambiguous: it has {len(candidates)} {kind} nodes; "
                           f"name one as '{prefix}.<node>'")
    return f"{prefix}.{candidates[0]}"


def inline_subgraphs(nodes: dict[str, nir.NIRNode], edges: list[tuple[str, str]],
                     prefix: str = "") -> tuple[dict[str, nir.NIRNode], list[tuple[str, str]]]:
    """Replace every nested :class:`nir.NIRGraph` by its nodes named ``sub.node``.

    The subgraph's Input/Output nodes become :class:`Passthrough` nodes; edges that name the
    subgraph are rewired to its (single) Input or Output node, or to ``sub.node`` when given.
    """
    out_nodes: dict[str, nir.NIRNode] = {}
    out_edges: list[tuple[str, str]] = []
    subs: dict[str, nir.NIRGraph] = {}
    for name, node in nodes.items():
        full = f"{prefix}{name}"
        if isinstance(node, nir.NIRGraph):
            subs[name] = node
            inner_nodes, inner_edges = inline_subgraphs(node.nodes, list(node.edges), prefix=f"{full}.")
            for k, n in inner_nodes.items():
                # deeper levels already replaced their own Input/Output nodes
                out_nodes[k] = Passthrough() if isinstance(n, nir.Input | nir.Output) else n
            out_edges.extend(inner_edges)
        else:
            out_nodes[full] = node

    def split(ref: str) -> tuple[str, str | None]:
        head, _, tail = ref.partition(".")
        return head, (tail or None)

    for src, dst in edges:
        s_head, s_tail = split(src)
        d_head, d_tail = split(dst)
        s = _endpoint(subs[s_head], f"{prefix}{s_head}", s_tail, nir.Output) if s_head in subs else f"{prefix}{src}"
        d = _endpoint(subs[d_head], f"{prefix}{d_head}", d_tail, nir.Input) if d_head in subs else f"{prefix}{dst}"
        out_edges.append((s, d))
    return out_nodes, out_edges


def topological_order(names: list[str], edges: list[tuple[str, str]]) -> list[str]:
    """Kahn's algorithm, stable in the nodes' declaration order; cycles raise a one-line error."""
    indeg = {n: 0 for n in names}
    succ: dict[str, list[str]] = {n: [] for n in names}
    for s, d in edges:
        succ[s].append(d)
        indeg[d] += 1
    rank = {n: i for i, n in enumerate(names)}
    ready = deque(sorted((n for n in names if indeg[n] == 0), key=rank.__getitem__))
    order: list[str] = []
    while ready:
        n = ready.popleft()
        order.append(n)
        for d in succ[n]:
            indeg[d] -= 1
            if indeg[d] == 0:
                ready.append(d)
    if len(order) != len(names):
        cyclic = sorted(n for n in names if indeg[n] > 0)
        raise SpkdiffError(f"the graph has a recurrent cycle through {', '.join(cyclic[:6])}: "
                           "the simulator runs feed-forward graphs only")
    return order


def flatten_graph(graph: nir.NIRGraph | str | Path) -> FlatGraph:
    """Load, inline subgraphs, check edges and order the nodes for execution."""
    g = load_graph(graph)
    nodes, edges = inline_subgraphs(dict(g.nodes), list(g.edges))
    seen: set[tuple[str, str]] = set()
    for s, d in edges:
        for end in (s, d):
            if end not in nodes:
                raise SpkdiffError(f"edge ({s!r}, {d!r}) names an unknown node {end!r}")
        if (s, d) in seen:
            raise SpkdiffError(f"duplicate edge ({s!r}, {d!r})")
        seen.add((s, d))
    names = list(nodes)
    order = topological_order(names, edges)
    preds: dict[str, list[str]] = {n: [] for n in names}
    succs: dict[str, list[str]] = {n: [] for n in names}
    for s, d in edges:
        preds[d].append(s)
        succs[s].append(d)
    if not any(isinstance(n, nir.Input) for n in nodes.values()):
        raise SpkdiffError("the NIR graph has no Input node")
    meta = g.metadata if isinstance(g.metadata, dict) else {}
    return FlatGraph(nodes=nodes, order=order, preds=preds, succs=succs, metadata=dict(meta))
