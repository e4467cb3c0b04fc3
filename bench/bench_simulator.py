"""Simulator float mode vs SpikingJelly's own float forward on the same network (CPU), interleaved repeats.

The network is a VQ-SVAE-encoder-sized SNN (direct-encoded image, conv/LIF stack, LIF read-out) built in
SpikingJelly (multi-step, torch backend) and exported to NIR by SpikingJelly's exporter (dt = 1).  The
simulator must give identical outputs.  Timings: minimum over interleaved repeats of wall time and of
process CPU time; with ``--threads 1`` (default) CPU time is the work done, robust on a shared machine.

    python bench/bench_simulator.py [--batch 32] [--steps 16] [--repeats 5] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def build_net(channels: tuple[int, int] = (32, 64), latent: int = 16):
    from spikingjelly.activation_based import layer, neuron

    c1, c2 = channels
    lif = dict(tau=2.0, decay_input=True, v_threshold=1.0, v_reset=0.0, step_mode="m")
    net = torch.nn.Sequential(
        layer.Conv2d(1, c1, 3, padding=1, step_mode="m"), neuron.LIFNode(**lif),
        layer.Conv2d(c1, c2, 3, stride=2, padding=1, step_mode="m"), neuron.LIFNode(**lif),
        layer.Conv2d(c2, c2, 3, stride=2, padding=1, step_mode="m"), neuron.LIFNode(**lif),
        layer.Conv2d(c2, latent, 1, step_mode="m"), neuron.LIFNode(**lif),
        layer.Flatten(step_mode="m"), layer.Linear(latent * 7 * 7, 10, step_mode="m"), neuron.LIFNode(**lif))
    gains = iter([4.0, 8.0, 12.0, 12.0, 12.0])  # a lively regime: ~9-23 % firing in every LIF layer
    for m in net:
        if isinstance(m, torch.nn.Conv2d | torch.nn.Linear):
            m.weight.data *= next(gains)
    return net.eval()


def timed(fn) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from spikingjelly.activation_based import functional
    from spikingjelly.activation_based.nir_exchange import export_to_nir

    from spkdiff.simulator import Simulator, energy, map_to_chip

    torch.manual_seed(0)
    net = build_net()
    image = torch.rand(args.batch, 1, 28, 28)
    x_seq = image.expand(args.steps, *image.shape).contiguous()

    def sj():
        functional.reset_net(net)
        with torch.no_grad():
            return net(x_seq)

    expected = sj()
    functional.reset_net(net)
    graph = export_to_nir(net, x_seq, dt=1.0)
    sim = Simulator(graph)
    (out_name,) = sim.outputs
    res = sim.run(x_seq, record=False)
    assert torch.equal(res.outputs[out_name], expected), "simulator output differs from SpikingJelly"
    assert torch.equal(sim.run(image, steps=args.steps, count=False).outputs[out_name], expected)

    runs = {
        "spikingjelly": sj,
        "sim_no_count": lambda: sim.run(x_seq, count=False),
        "sim_count": lambda: sim.run(x_seq, count=True),
        "sim_static_input_no_count": lambda: sim.run(image, steps=args.steps, count=False),
        "sim_static_input_count": lambda: sim.run(image, steps=args.steps, count=True),
    }
    for fn in runs.values():
        fn()  # warm-up
    wall = {k: float("inf") for k in runs}
    cpu = {k: float("inf") for k in runs}
    for _ in range(args.repeats):  # interleaved, so load changes hit every variant alike
        for k, fn in runs.items():
            w, c = timed(fn)
            wall[k], cpu[k] = min(wall[k], w), min(cpu[k], c)
    report = {
        "batch": args.batch, "steps": args.steps, "threads": torch.get_num_threads(),
        "wall_s": wall, "cpu_s": cpu,
        "cpu_ratio_vs_spikingjelly": {k: v / cpu["spikingjelly"] for k, v in cpu.items()},
        "wall_ratio_vs_spikingjelly": {k: v / wall["spikingjelly"] for k, v in wall.items()},
        "firing_rates": {k: v.firing_rate for k, v in res.counters.layers.items() if v.kind == "neuron"},
        "totals_per_sample": res.counters.totals(),
        "energy": {k: v for k, v in energy(res.counters).to_dict().items() if k in ("total_j", "ann_total_j",
                                                                                   "ratio_vs_ann", "per_op_j")},
        "mapping": map_to_chip(sim, counters=sim.run(x_seq, per_neuron=True).counters).summary(),
    }
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
