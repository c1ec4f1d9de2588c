#!/usr/bin/env bash
# Parity of an imported torchvision ResNet-50 with PyTorch at 224 px: the peer saves
# `torchvision.models.resnet50()` (random weights; its batch norms' running statistics set by
# train-mode passes over random photos, their scales and shifts drawn away from 1 and 0), imprint
# imports the file with nothing but the normalisation said (architecture, input size, state dict
# found), and both score the same PNG photos (CIFAR-10 training photos enlarged to 224x224 by the
# peer, so that no resizing differs; the running statistics come from photos of other classes). Prints the largest logit difference and the top-1
# agreement. Needs the photos in data/cifar10/train, the release binary, and the PyTorch peer
# of ../shared/README.md (torch, torchvision, pillow).
#   bash tests/parity/resnet50.sh [PYTHON] [PHOTOS_PER_CLASS] [ARCH]
# ARCH is a torchvision constructor: resnet50 (default), resnet101, resnet152, wide_resnet50_2.
set -euo pipefail
py=${1:-$HOME/peer/bin/python}
per_class=${2:-4}
arch=${3:-resnet50}
imprint=target/release/imprint
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$py" - "$work" "$per_class" "$arch" <<'PY'
import pathlib, sys, torch, torchvision
from PIL import Image
work, per_class, arch = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
torch.manual_seed(0)
# Two folders named after two of the classifier's outputs, so that `evaluate` can score them.
photos = sorted(pathlib.Path("data/cifar10/train").iterdir())[:2]
for label, d in enumerate(photos):
    (work / "png" / str(label)).mkdir(parents=True)
    for f in sorted(d.glob("*.jpg"))[:per_class]:
        big = Image.open(f).convert("RGB").resize((224, 224), Image.BILINEAR)
        big.save(work / "png" / str(label) / (f.stem + ".png"))
net = getattr(torchvision.models, arch)()
for m in net.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
        m.momentum = None  # running statistics: the average over the passes below
        with torch.no_grad():
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.2, 0.2)
# The running statistics of photos like those scored (other classes', normalised as ImageNet's),
# so that activations keep the scale of a trained net's.
mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
others = [f for d in sorted(pathlib.Path("data/cifar10/train").iterdir())[2:6]
          for f in sorted(d.glob("*.jpg"))[:4]]
def photo(f):
    big = Image.open(f).convert("RGB").resize((224, 224), Image.BILINEAR)
    return (torchvision.transforms.functional.to_tensor(big) - mean) / std
batch = torch.stack([photo(f) for f in others])
net.train()
with torch.no_grad():
    for half in batch.split(8):
        net(half)
net.eval()
torch.save(net.state_dict(), work / f"{arch}.pth")
PY

"$imprint" import "$work/$arch.pth" --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 \
    --out "$work/imported"
"$imprint" evaluate --model "$work/imported/model.safetensors" --input "$work/png" \
    --logits "$work/ours.csv" >/dev/null

"$py" - "$work" "$arch" <<'PY'
import csv, pathlib, sys, numpy as np, torch, torchvision
from PIL import Image
work, arch = pathlib.Path(sys.argv[1]), sys.argv[2]
net = getattr(torchvision.models, arch)()
net.load_state_dict(torch.load(work / f"{arch}.pth", weights_only=True))
net.eval()
mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
with open(work / "ours.csv") as f:
    rows = list(csv.reader(f))[1:]
worst, same = 0.0, 0
for row in rows:
    pixels = np.asarray(Image.open(row[0]).convert("RGB"), dtype=np.float32) / 255.0
    x = (torch.from_numpy(pixels).permute(2, 0, 1) - mean) / std
    with torch.no_grad():
        theirs = net(x.unsqueeze(0))[0].numpy()
    ours = np.array([float(v) for v in row[2:]], dtype=np.float64)
    worst = max(worst, float(np.abs(ours - theirs).max()))
    same += int(ours.argmax() == theirs.argmax())
    scale = float(np.abs(theirs).max())
print(f"{arch} at 224x224: {len(rows)} PNG photos, max |logit difference| {worst:.2e} "
      f"(logits up to {scale:.2f} in size), same top-1 on {same}")
PY
