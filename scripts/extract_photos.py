"""Extracts the sample photos from the scikit-image and matplotlib wheels.

Real photos for the demo and the tests come from packages, never from the network:
the wheels are fetched by scripts/setup-venv.sh and only the photos are unzipped.
"""

import argparse
import pathlib
import sys
import zipfile

# (wheel name prefix, path inside the wheel)
PHOTOS = [
    ("scikit_image-", "skimage/data/chelsea.png"),
    ("scikit_image-", "skimage/data/coffee.png"),
    ("scikit_image-", "skimage/data/astronaut.png"),
    ("scikit_image-", "skimage/data/rocket.jpg"),
    ("scikit_image-", "skimage/data/motorcycle_left.png"),
    ("scikit_image-", "skimage/data/camera.png"),
    ("scikit_image-", "skimage/data/horse.png"),
    ("scikit_image-", "skimage/data/logo.png"),
    ("scikit_image-", "skimage/data/hubble_deep_field.jpg"),
    ("matplotlib-", "matplotlib/mpl-data/sample_data/grace_hopper.jpg"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--wheels", type=pathlib.Path, required=True)
    parser.add_argument("--out", type=pathlib.Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for prefix, member in PHOTOS:
        wheels = sorted(args.wheels.glob(prefix + "*.whl"))
        if not wheels:
            print(f"extract_photos: no {prefix}*.whl in {args.wheels}; run scripts/setup-venv.sh", file=sys.stderr)
            return 1
        with zipfile.ZipFile(wheels[-1]) as wheel:
            data = wheel.read(member)
        (args.out / pathlib.PurePosixPath(member).name).write_bytes(data)
    print(f"extract_photos: {len(PHOTOS)} photos in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
