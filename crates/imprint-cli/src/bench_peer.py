# The PyTorch twin of one `imprint bench` measurement: the same net, batch, data size,
# optimizer (Adam 1e-3) and loss as ours, in one of PyTorch's modes on the CPU:
#   fp32    plain float32, NCHW;
#   cl      float32 with channels_last tensors;
#   bf16    torch.autocast("cpu", dtype=torch.bfloat16) (oneDNN runs it on AMX tiles or
#           AVX512-BF16 where the CPU has them);
#   bf16cl  both.
# argv[1] is a JSON object of settings (written by imprint bench). Prints one JSON line: images/s,
# threads, peak memory in KiB, the ATen CPU capability, whether oneDNN has bf16 and AMX here,
# and the oneDNN kernels one more step ran (`probe` prints the capabilities alone).
import json, os, resource, sys, tempfile, time

import torch
import torch.nn as nn
import torch.nn.functional as F

cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])


def capabilities():
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    return {
        "torch": torch.__version__.split("+")[0],
        "capability": torch.backends.cpu.get_cpu_capability(),
        "bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "amx": bool(amx()),
    }


if cfg["task"] == "probe":
    print(json.dumps(capabilities()))
    sys.exit()

torch.manual_seed(0)
mode, task, kind = cfg["mode"], cfg["task"], cfg["kind"]
batch, steps, side, latent = cfg["batch"], cfg["steps"], cfg["side"], cfg["latent"]
widths = cfg["widths"]
channels_last = mode in ("cl", "bf16cl")
bf16 = mode in ("bf16", "bf16cl")


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False); self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False); self.b2 = nn.BatchNorm2d(cout)
        self.pad = (cout - cin) // 2 if cin != cout else 0
        self.stride = stride

    def forward(self, x):
        h = F.relu(self.b1(self.c1(x)))
        h = self.b2(self.c2(h))
        s = x
        if self.stride != 1 or self.pad:
            s = F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(h + s)


def cifar_resnet(depth):
    """He et al.'s CIFAR net, as our `resnet` of the CIFAR layout: features, no head."""
    layers = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    cin = 16
    for i, w in enumerate([16, 32, 64]):
        for b in range((depth - 2) // 6):
            layers.append(Block(cin, w, 2 if i > 0 and b == 0 else 1)); cin = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten()), cin


def imagenet_resnet(depth):
    """torchvision's resnet18/34, as our ImageNet layout: features, no head."""
    import torchvision
    net = getattr(torchvision.models, f"resnet{depth}")()
    features = net.fc.in_features
    net.fc = nn.Identity()
    return net, features


images = steps * batch
if kind == "resnet":
    encoder, features = (cifar_resnet if cfg["layout"] == "cifar" else imagenet_resnet)(cfg["depth"])
    shape = (3, side, side)
elif kind == "dense":
    dims = [side * side] + widths + [latent]
    enc, dec = [], []
    for i in range(len(dims) - 1):
        enc += [nn.Linear(dims[i], dims[i + 1]), nn.ReLU()]
        dec += [nn.Linear(dims[-1 - i], dims[-2 - i]), nn.ReLU()]
    encoder, decoder = nn.Sequential(*enc[:-1]), nn.Sequential(*dec[:-1], nn.Sigmoid())
    features, shape = latent, (side * side,)
else:
    chans, sizes = [1] + widths, [side]
    for _ in widths: sizes.append((sizes[-1] - 1) // 2 + 1)
    enc = []
    for i in range(len(widths)): enc += [nn.Conv2d(chans[i], chans[i + 1], 3, 2, 1), nn.ReLU()]
    flat = chans[-1] * sizes[-1] ** 2
    encoder = nn.Sequential(*enc, nn.Flatten(), nn.Linear(flat, latent))
    dec = [nn.Linear(latent, flat), nn.ReLU(), nn.Unflatten(1, (chans[-1], sizes[-1], sizes[-1]))]
    for i in reversed(range(len(widths))):
        op = sizes[i] - ((sizes[i + 1] - 1) * 2 + 3 - 2)
        dec += [nn.ConvTranspose2d(chans[i + 1], chans[i], 3, 2, 1, output_padding=op), nn.ReLU()]
    decoder = nn.Sequential(*dec[:-1], nn.Sigmoid(), nn.Flatten())
    features, shape = latent, (1, side, side)

x = torch.rand(images, *shape)
y = torch.randint(0, 10, (images,))
if task == "pretrain":
    nets = [encoder, decoder]
    def loss_of(xb): return F.mse_loss(decoder(encoder(xb)).view(len(xb), -1), xb.view(len(xb), -1))
elif task == "simclr":
    # SimCLR's step as our contrastive pretext takes it: two views of each image (each flipped
    # or not at random) through the encoder one after the other, a projection head
    # features -> features -> 64, NT-Xent.
    head = nn.Sequential(nn.Linear(features, features), nn.ReLU(), nn.Linear(features, 64))
    nets = [encoder, head]
    t = cfg["temperature"]
    def view(xb): return torch.where(torch.rand(len(xb), 1, 1, 1) < 0.5, xb.flip(3), xb)
    def loss_of(xb):
        a, b = head(encoder(view(xb))), head(encoder(view(xb)))
        z = torch.cat([F.normalize(a, dim=1), F.normalize(b, dim=1)])
        n = len(z)
        similarity = z @ z.t() / t - 1e9 * torch.eye(n)
        return F.cross_entropy(similarity, (torch.arange(n) + n // 2) % n)
else:
    classifier = nn.Sequential(encoder, nn.Linear(features, 10))
    nets = [classifier]
    yb = None
    def loss_of(xb): return F.cross_entropy(classifier(xb), yb)

for net in nets:
    if channels_last and len(shape) == 3:
        net.to(memory_format=torch.channels_last)
params = [p for net in nets for p in net.parameters()]
opt = torch.optim.Adam(params, 1e-3)


def batch_of(idx):
    xb = x[idx]
    return xb.contiguous(memory_format=torch.channels_last) if channels_last and len(shape) == 3 else xb


def step(idx):
    global yb
    yb = y[idx]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = loss_of(batch_of(idx))
    opt.zero_grad(); loss.backward(); opt.step(); loss.item()


def train(count):
    perm = torch.randperm(images)
    for i in range(count):
        step(perm[i * batch:(i + 1) * batch])


def infer(chunks=None):
    classifier.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, images, cfg["chunk"]):
            F.softmax(classifier(batch_of(torch.arange(i, min(i + cfg["chunk"], images)))).float(), 1).numpy()
            if chunks is not None and i // cfg["chunk"] + 1 >= chunks:
                return


# Warm-up as ours: a whole epoch of the autoencoders, 5 steps of the others, one pass of
# inference; then the timed run.
if task == "infer":
    warm, timed, again = infer, infer, lambda: infer(1)
elif task == "pretrain":
    warm, timed, again = (lambda: train(steps),) * 2 + (lambda: train(1),)
else:
    warm, timed, again = lambda: train(min(5, steps)), lambda: train(steps), lambda: train(1)
warm()
start = time.perf_counter(); timed(); elapsed = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

# One more step (or chunk) with oneDNN's verbose log on, captured from the C side's stdout.
sys.stdout.flush()
saved, log = os.dup(1), tempfile.TemporaryFile()
os.dup2(log.fileno(), 1)
try:
    with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
        again()
finally:
    sys.stdout.flush(); os.dup2(saved, 1)
log.seek(0)
kernels = set()
for line in log.read().decode(errors="replace").splitlines():
    f = line.split(",")
    if len(f) > 8 and f[2] == "primitive" and f[3] == "exec" and f[5] in ("convolution", "deconvolution", "inner_product", "matmul"):
        src = next((m.split(":")[1] for m in f[8].split() if m.startswith("src:")), "?")
        kernels.add(f"{f[5]} {f[6]} {src}")

print(json.dumps(dict(capabilities(), images_per_second=images / elapsed, threads=torch.get_num_threads(),
                      peak_kib=peak, mode=mode, kernels=sorted(kernels))))
