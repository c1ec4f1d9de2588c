#!/usr/bin/env bash
# Parity of the imported ResNet-20 with PyTorch: logits on lossless PNG copies of the first 100
# CIFAR-10 training photos of each class, for the legacy `.th` file and a zip-format re-save of it,
# and accuracy on the JPEG folder itself. Needs the photos in data/cifar10/train, the release
# binary, and the PyTorch peer of ../shared/README.md (torch, pillow, safetensors).
#   bash tests/parity/resnet20.sh [PYTHON]
set -euo pipefail
py=${1:-$HOME/peer/bin/python}
ref=../shared/reference/torch_resnet_reference.py
th=../shared/models/resnet20-12fca82f.th
imprint=target/release/imprint
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
classes=airplane,automobile,bird,cat,deer,dog,frog,horse,ship,truck

"$py" - "$work" <<'PY'
import pathlib, sys, torch
from PIL import Image
work = pathlib.Path(sys.argv[1])
for d in sorted(pathlib.Path("data/cifar10/train").iterdir()):
    for form in ["png", "jpg"]:
        (work / form / d.name).mkdir(parents=True)
    for f in sorted(d.glob("*.jpg"))[:100]:
        Image.open(f).convert("RGB").save(work / "png" / d.name / (f.stem + ".png"))
        (work / "jpg" / d.name / f.name).symlink_to(f.resolve())
torch.save(torch.load("../shared/models/resnet20-12fca82f.th", map_location="cpu", weights_only=True), work / "zip.pt")
PY

for form in legacy:$th zip:$work/zip.pt; do
    "$imprint" import "${form#*:}" --arch resnet20 --input 3x32x32 \
        --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 --classes $classes \
        --out "$work/${form%%:*}" >/dev/null
    "$imprint" evaluate --model "$work/${form%%:*}/model.safetensors" --input "$work/png" \
        --logits "$work/${form%%:*}.csv" >/dev/null
done
"$py" "$ref" eval "$work/png" --weights "$th" --logits "$work/torch.csv" >/dev/null

"$py" - "$work" <<'PY'
import csv, sys
work = sys.argv[1]
def read(name):
    with open(f"{work}/{name}.csv") as f:
        return {r[0]: [float(x) for x in r[2:]] for r in list(csv.reader(f))[1:]}
torch_logits = read("torch")
for form in ["legacy", "zip"]:
    ours = read(form)
    assert ours.keys() == torch_logits.keys(), "different images"
    diff = max(abs(a - b) for p in ours for a, b in zip(ours[p], torch_logits[p]))
    top1 = sum(max(range(10), key=o.__getitem__) == max(range(10), key=t.__getitem__)
               for o, t in ((ours[p], torch_logits[p]) for p in ours))
    print(f"{form}: {len(ours)} PNG images, max |logit difference| {diff:.2e}, same top-1 on {top1}")
PY

echo "JPEG folder, first 100 photos per class:"
"$imprint" evaluate --model "$work/legacy/model.safetensors" --input "$work/jpg" | head -1
"$py" "$ref" eval data/cifar10/train --weights "$th" --limit 1000 | tail -1
