"""The same layers and measurements as conv_speed.rs, in PyTorch, for comparison.

python conv_speed_torch.py [iterations] [threads] [--cpu-time]   (2 threads unless told, like
the Rust run on 2 cores; --cpu-time times by process CPU time, meaningful with 1 thread)
"""
import statistics
import sys
import time

import torch

args = [a for a in sys.argv[1:] if not a.startswith("--")]
iters = int(args[0]) if args else 10
torch.set_num_threads(int(args[1]) if len(args) > 1 else 2)
clock = time.process_time if "--cpu-time" in sys.argv else time.perf_counter
B = 128
layers = [
    ("conv  1->32 k3 s2 p1", torch.nn.Conv2d(1, 32, 3, 2, 1), (1, 28)),
    ("conv 32->64 k3 s2 p1", torch.nn.Conv2d(32, 64, 3, 2, 1), (32, 14)),
    ("convT 64->32 k4 s2 p1", torch.nn.ConvTranspose2d(64, 32, 4, 2, 1), (64, 7)),
    ("convT 32->1 k4 s2 p1", torch.nn.ConvTranspose2d(32, 1, 4, 2, 1), (32, 14)),
]
print(f"batch {B}, {torch.get_num_threads()} threads, median of {iters} runs")
tf = tb = 0.0
for name, layer, (c, hw) in layers:
    x = torch.rand(B, c, hw, hw, requires_grad=True)
    fwd, bwd = [], []
    for i in range(iters + 2):
        layer.zero_grad()
        x.grad = None
        t = clock()
        y = layer(x)
        f = clock() - t
        t = clock()
        y.sum().backward()
        b = clock() - t
        if i >= 2:
            fwd.append(f)
            bwd.append(b)
    f, b = statistics.median(fwd) * 1e3, statistics.median(bwd) * 1e3
    tf += f
    tb += b
    print(f"{name:22s} fwd {f:7.2f} ms  bwd {b:7.2f} ms")
print(f"sum of layers          fwd {tf:7.2f} ms  bwd {tb:7.2f} ms  -> {B / ((tf + tb) / 1e3):.0f} images/s")

model = torch.nn.Sequential(
    layers[0][1], torch.nn.ReLU(), layers[1][1], torch.nn.ReLU(),
    layers[2][1], torch.nn.ReLU(), layers[3][1],
)
x = torch.rand(B, 1, 28, 28)
times = []
for i in range(iters + 2):
    model.zero_grad()
    t = clock()
    loss = ((model(x) - x) ** 2).mean()
    loss.backward()
    if i >= 2:
        times.append(clock() - t)
step = statistics.median(times)
print(f"chained step (fwd+bwd, ReLU, MSE)  {step * 1e3:7.2f} ms  -> {B / step:.0f} images/s")
