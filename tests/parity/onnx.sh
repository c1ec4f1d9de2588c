#!/usr/bin/env bash
# Parity of `imprint export --onnx` with onnxruntime on real photos: the shared ResNet-20 of
# ../shared/models is imported (with the normalisation it was trained with), scored by imprint
# on lossless PNG copies of the first PER_CLASS CIFAR-10 training photos of each class
# (`evaluate --logits`), exported to ONNX, and run by onnxruntime on the same PNGs, and by
# PyTorch as a third opinion. Prints the largest logit differences and the top-1 agreement.
# Needs the photos in data/cifar10/train, a built binary (IMPRINT, default the release one), and
# the PyTorch peer of ../shared/README.md (torch, onnxruntime, onnx, pillow).
#   bash tests/parity/onnx.sh [PYTHON] [PER_CLASS]
set -euo pipefail
py=${1:-$HOME/peer/bin/python}
per_class=${2:-100}
imprint=${IMPRINT:-target/release/imprint}
ref=../shared/reference/torch_resnet_reference.py
th=../shared/models/resnet20-12fca82f.th
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
classes=airplane,automobile,bird,cat,deer,dog,frog,horse,ship,truck

"$py" - "$work" "$per_class" <<'PY'
import pathlib, sys
from PIL import Image
work, per_class = pathlib.Path(sys.argv[1]), int(sys.argv[2])
for d in sorted(pathlib.Path("data/cifar10/train").iterdir()):
    (work / "png" / d.name).mkdir(parents=True)
    for f in sorted(d.glob("*.jpg"))[:per_class]:
        Image.open(f).convert("RGB").save(work / "png" / d.name / (f.stem + ".png"))
PY

"$imprint" import "$th" --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 --classes $classes \
    --out "$work/imported" >/dev/null
"$imprint" evaluate --model "$work/imported/model.safetensors" --input "$work/png" \
    --logits "$work/ours.csv" >/dev/null
"$imprint" export --model "$work/imported/model.safetensors" --onnx "$work/resnet20.onnx"
"$py" "$ref" eval "$work/png" --weights "$th" --logits "$work/torch.csv" >/dev/null

"$py" - "$work" <<'PY'
import csv, sys, numpy as np, onnx, onnxruntime as ort
from PIL import Image
work = sys.argv[1]
onnx.checker.check_model(onnx.load(f"{work}/resnet20.onnx"), full_check=True)
session = ort.InferenceSession(f"{work}/resnet20.onnx", providers=["CPUExecutionProvider"])
def read(name):
    with open(f"{work}/{name}.csv") as f:
        return {r[0]: np.array([float(x) for x in r[2:]]) for r in list(csv.reader(f))[1:]}
ours, torch_logits = read("ours"), read("torch")
assert ours.keys() == torch_logits.keys(), "different images"
runtime = {}
for path in ours:
    x = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    runtime[path] = session.run(None, {"input": x.transpose(2, 0, 1)[None]})[0][0]
def compare(a, b):
    diff = max(float(np.abs(a[p] - b[p]).max()) for p in a)
    top1 = sum(int(a[p].argmax() == b[p].argmax()) for p in a)
    return f"max |logit difference| {diff:.2e}, same top-1 on {top1}"
print(f"{len(ours)} PNG photos; onnx.checker: valid")
print(f"onnxruntime vs imprint: {compare(runtime, ours)}")
print(f"onnxruntime vs PyTorch: {compare(runtime, torch_logits)}")
print(f"imprint vs PyTorch:     {compare(ours, torch_logits)}")
PY
