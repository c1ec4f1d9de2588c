#!/usr/bin/env python3
"""Convert scikit-learn's digits.csv.gz (UCI 8x8 hand-written digits) to idx files.

Usage: python3 convert.py path/to/digits.csv.gz [output_dir]

Each input row holds 64 pixel values 0..16 (row-major 8x8) followed by the label.
Pixels are rescaled to bytes with round(v * 255 / 16). The gzip streams are written
with a zero timestamp and no file name so the output is byte-for-byte reproducible.
Standard library only.
"""

import csv
import gzip
import io
import os
import struct
import sys


def read_rows(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", newline="") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            if not row:
                continue
            if len(row) != 65:
                sys.exit(f"{path}:{lineno}: expected 65 values, found {len(row)}")
            values = [float(v) for v in row]
            pixels = values[:64]
            label = values[64]
            if any(v < 0 or v > 16 for v in pixels):
                sys.exit(f"{path}:{lineno}: pixel value outside 0..16")
            if label != int(label) or not 0 <= label <= 9:
                sys.exit(f"{path}:{lineno}: label {label} is not a digit")
            yield [int(round(v * 255 / 16)) for v in pixels], int(label)


def write_gz(path, payload):
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(payload)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(buf.getvalue())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    src = sys.argv[1]
    out = sys.argv[2] if len(sys.argv) == 3 else os.path.dirname(os.path.abspath(__file__))
    rows = list(read_rows(src))
    n = len(rows)
    images = struct.pack(">IIII", 0x00000803, n, 8, 8) + bytes(p for pix, _ in rows for p in pix)
    labels = struct.pack(">II", 0x00000801, n) + bytes(label for _, label in rows)
    write_gz(os.path.join(out, "digits-images-idx3-ubyte.gz"), images)
    write_gz(os.path.join(out, "digits-labels-idx1-ubyte.gz"), labels)
    print(f"wrote {n} images of 8x8 to {out}")


if __name__ == "__main__":
    main()
