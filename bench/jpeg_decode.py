"""JPEG decode of face crops, side by side in one run: PIL (what the loader used before), the
loader's decoder (`train.data.samples.decode_jpeg`: simplejpeg, libjpeg-turbo bindings) and
torchvision's `decode_jpeg` (libjpeg-turbo; deprecated since torchvision 0.29). Each gives a 3 x H x W uint8 tensor, as the training transform takes it;
one thread, the best of --rounds runs. Crops are encoded as ingest encodes them
(`data_pipeline.crops.encode_jpeg`, quality 95) from scikit-image's astronaut photo with noise, at
the demo's and the B7 recipe's crop sizes. "max |diff|" is the largest pixel difference from PIL.

PyTurboJPEG is not here: it needs the system's libturbojpeg, which this machine lacks. nvJPEG and
DALI need a GPU (not measured).

Usage: python bench/jpeg_decode.py [--crops 300] [--rounds 3] [--sizes 128,380]
"""

from __future__ import annotations

import argparse
import io
import time


def crops(size: int, n: int) -> list[bytes]:
    import numpy as np  # noqa: PLC0415
    from PIL import Image  # noqa: PLC0415
    from skimage import data  # noqa: PLC0415

    from data_pipeline.crops import encode_jpeg  # noqa: PLC0415

    face = np.asarray(Image.fromarray(data.astronaut()[0:380, 100:480]).resize((size, size)))
    rng = np.random.default_rng(0)
    return [encode_jpeg(np.clip(face + rng.integers(-8, 8, face.shape), 0, 255).astype(np.uint8), 95) for _ in range(n)]


def decoders() -> dict:
    import torch  # noqa: PLC0415
    from PIL import Image  # noqa: PLC0415
    from torchvision.transforms import v2  # noqa: PLC0415

    from train.data.samples import decode_jpeg  # noqa: PLC0415

    to_tensor = v2.PILToTensor()

    def pil(b: bytes):
        image = Image.open(io.BytesIO(b))
        image.load()
        return to_tensor(image.convert("RGB"))

    def torchvision_decode(b: bytes):
        from torchvision.io import ImageReadMode, decode_jpeg as decode  # noqa: PLC0415

        return decode(torch.frombuffer(bytearray(b), dtype=torch.uint8), mode=ImageReadMode.RGB)

    out = {"PIL": pil, "the loader's (simplejpeg)": decode_jpeg, "torchvision": torchvision_decode}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--crops", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sizes", default="128,380")
    args = ap.parse_args()

    import torch  # noqa: PLC0415
    from rich.console import Console  # noqa: PLC0415
    from rich.progress import Progress  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    torch.set_num_threads(1)
    sizes = [int(s) for s in args.sizes.split(",")]
    decode = decoders()
    table = Table(title=f"JPEG decode, {args.crops} crops, one thread, best of {args.rounds}")
    for col in ("crop", "decoder", "crops/s", "vs PIL", "max |diff|"):
        table.add_column(col, justify="right" if col != "decoder" else "left")
    with Progress(transient=True) as bar:
        task = bar.add_task("decoding", total=len(sizes) * len(decode) * args.rounds)
        for size in sizes:
            data = crops(size, args.crops)
            reference = [decode["PIL"](b) for b in data]
            rates = {}
            for name, fn in decode.items():
                best = 0.0
                for _ in range(args.rounds):
                    t0 = time.perf_counter()
                    out = [fn(b) for b in data]
                    best = max(best, len(data) / (time.perf_counter() - t0))
                    bar.advance(task)
                diff = max(int((a.int() - b.int()).abs().max()) for a, b in zip(reference, out))
                rates[name] = best
                table.add_row(f"{size} px", name, f"{best:,.0f}", f"{best / rates['PIL']:.2f}x", str(diff))
    Console().print(table)


if __name__ == "__main__":
    main()
