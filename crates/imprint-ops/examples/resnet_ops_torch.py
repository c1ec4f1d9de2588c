"""The layers and measurements of resnet_ops.rs in PyTorch, for per-layer ratios.

python resnet_ops_torch.py [iterations] [threads] [--chain-only] [--only=NAME_PART] [--cpu-time]
(2 threads unless told; --cpu-time times by process CPU time, meaningful with 1 thread)

Every layer runs at batch 128 in training mode; "bwd" is the backward pass of `y.sum()` (the
sum itself untimed), as on the Rust side. The last line times a whole ResNet-20 training step (forward, cross-entropy,
backward, Adam).
"""
import statistics
import sys
import time

import torch
import torch.nn.functional as F

args = [a for a in sys.argv[1:] if not a.startswith("--")]
iters = int(args[0]) if args else 10
torch.set_num_threads(int(args[1]) if len(args) > 1 else 2)
torch.manual_seed(0)
B = 128
only = next((a[len("--only="):] for a in sys.argv if a.startswith("--only=")), "")
clock = time.process_time if "--cpu-time" in sys.argv else time.perf_counter


def conv_weight(cin, cout):
    return (torch.rand(cout, cin, 3, 3) * 0.2 - 0.1).requires_grad_()


def bn_params(c):
    return torch.ones(c, requires_grad=True), torch.zeros(c, requires_grad=True)


def time_layer(name, f, x):
    if only not in name:
        return
    fwd, bwd = [], []
    for i in range(iters + 2):
        t = clock()
        y = f(x)
        a = clock() - t
        loss = y.sum()  # untimed, as on the Rust side
        t = clock()
        loss.backward()
        b = clock() - t
        if i >= 2:
            fwd.append(a)
            bwd.append(b)
    f_ms, b_ms = statistics.median(fwd) * 1e3, statistics.median(bwd) * 1e3
    print(f"{name:28s} fwd {f_ms:7.3f} ms  bwd {b_ms:7.3f} ms")


def layers():
    x0 = torch.rand(B, 3, 32, 32)
    w = conv_weight(3, 16)
    time_layer("conv  3->16 s1 32x32 (data)", lambda x: F.conv2d(x, w, padding=1), x0)
    for c, hw in [(16, 32), (32, 16), (64, 8)]:
        x = torch.rand(B, c, hw, hw, requires_grad=True)
        w = conv_weight(c, c)
        time_layer(f"conv {c:2d}->{c:<2d} s1 {hw}x{hw}", lambda x: F.conv2d(x, w, padding=1), x)
    for c, hw in [(16, 32), (32, 16)]:
        x = torch.rand(B, c, hw, hw, requires_grad=True)
        w = conv_weight(c, 2 * c)
        time_layer(
            f"conv {c:2d}->{2 * c:<2d} s2 {hw}x{hw}",
            lambda x: F.conv2d(x, w, stride=2, padding=1),
            x,
        )
    for c, hw in [(16, 32), (32, 16), (64, 8)]:
        x = torch.rand(B, c, hw, hw, requires_grad=True)
        g, b = bn_params(c)
        bn = lambda x: F.batch_norm(x, None, None, g, b, training=True, eps=1e-5)
        time_layer(f"bn train {c} {hw}x{hw}", bn, x)
        time_layer(f"relu {c} {hw}x{hw}", F.relu, x)
        r = torch.rand(B, c, hw, hw)
        time_layer(f"add {c} {hw}x{hw}", lambda x: x + r, x)
        time_layer(f"bn+relu {c} {hw}x{hw}", lambda x: F.relu(bn(x)), x)
        time_layer(f"bn+add+relu {c} {hw}x{hw}", lambda x: F.relu(bn(x) + r), x)


def shortcut(x, cout):
    """Option A: strided identity, zero channels added on both sides."""
    if x.shape[1] == cout:
        return x
    pad = (cout - x.shape[1]) // 2
    return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad))


class ResNet20(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.convs = torch.nn.ParameterList()
        self.bns = torch.nn.ModuleList()
        self.plan = []  # (cin, cout, stride) of each block
        self.stem = torch.nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.stem_bn = torch.nn.BatchNorm2d(16)
        cin = 16
        for cout, stride in [(16, 1), (32, 2), (64, 2)]:
            for i in range(3):
                s = stride if i == 0 else 1
                self.plan.append((cin, cout, s))
                self.convs.append(torch.nn.Conv2d(cin, cout, 3, s, 1, bias=False).weight)
                self.convs.append(torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False).weight)
                self.bns.append(torch.nn.BatchNorm2d(cout))
                self.bns.append(torch.nn.BatchNorm2d(cout))
                cin = cout
        self.fc = torch.nn.Linear(64, 10)

    def forward(self, x):
        h = F.relu(self.stem_bn(self.stem(x)))
        for k, (cin, cout, s) in enumerate(self.plan):
            y = F.relu(self.bns[2 * k](F.conv2d(h, self.convs[2 * k], stride=s, padding=1)))
            y = self.bns[2 * k + 1](F.conv2d(y, self.convs[2 * k + 1], padding=1))
            h = F.relu(y + shortcut(h, cout))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


def train_step():
    model = ResNet20()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(B, 3, 32, 32)
    labels = torch.randint(0, 10, (B,))
    times = []
    for i in range(iters + 2):
        t = clock()
        opt.zero_grad()
        F.cross_entropy(model(x), labels).backward()
        opt.step()
        if i >= 2:
            times.append(clock() - t)
    step = statistics.median(times)
    print(f"resnet20 train step {step * 1e3:8.2f} ms  -> {B / step:.0f} images/s")


kind = "process CPU time" if "--cpu-time" in sys.argv else "wall clock"
print(f"batch {B}, {torch.get_num_threads()} threads, median of {iters} runs, {kind}")
if "--chain-only" not in sys.argv:
    layers()
if not only:
    train_step()
