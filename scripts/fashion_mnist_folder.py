"""Write a Fashion-MNIST class folder (one PNG per image, one subfolder per class): the kind of folder a user
hands to ``edgetl bench backbones --data`` / ``edgetl-device compare --data``.

    python scripts/fashion_mnist_folder.py --per-class 100 -o runs/fmnist100
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from edgetl.datasets import balanced_subset, load_fashion_mnist


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder to write (class subfolders)")
    parser.add_argument("--per-class", type=int, default=100, help="images per class")
    parser.add_argument("--split", default="test", help="Fashion-MNIST split the images come from")
    parser.add_argument("--seed", type=int, default=0, help="which images are drawn")
    args = parser.parse_args()
    data = balanced_subset(load_fashion_mnist(args.split), args.per_class, seed=args.seed)
    for i, (image, label) in enumerate(zip(data.images, data.labels, strict=True)):
        folder = args.output / data.classes[int(label)].replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:05d}.png")
    print(f"wrote {len(data)} images in {len(data.classes)} classes to {args.output}")


if __name__ == "__main__":
    main()
