"""A TensorBoard projector log: explore the embedding interactively.

Written directly in the projector plugin's file format (``projector_config.pbtxt`` pointing at a
tensor TSV, a metadata TSV and a sprite PNG), so the log is deterministic and needs no checkpoint
or event file: ``tensorboard --logdir DIR`` and open the PROJECTOR tab.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from schoolvision.io.atomic import write_bytes, write_text

SPRITE_MAX = 8192  # the projector refuses sprites larger than 8192 x 8192 pixels


def sprite_image(thumbnails: np.ndarray, max_size: int = SPRITE_MAX) -> tuple[np.ndarray, int]:
    """Tile ``(N, h, w, 3)`` uint8 thumbnails row-major into one square image; returns (sprite, cell size)."""
    from PIL import Image

    n = len(thumbnails)
    grid = int(np.ceil(np.sqrt(n)))
    cell = int(min(thumbnails.shape[1], max_size // grid))
    sprite = np.zeros((grid * cell, grid * cell, 3), dtype=np.uint8)
    for i, thumb in enumerate(thumbnails):
        if thumb.shape[0] != cell:
            thumb = np.asarray(Image.fromarray(thumb).resize((cell, cell), Image.Resampling.BILINEAR))
        r, c = divmod(i, grid)
        sprite[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] = thumb
    return sprite, cell


def write_projector(
    log_dir: str | Path,
    vectors: np.ndarray,
    metadata: pd.DataFrame,
    thumbnails: np.ndarray | None = None,
    name: str = "chip_features",
) -> Path:
    """Write embeddings, metadata (one row per vector, header row) and an optional sprite; returns the config path."""
    from PIL import Image

    log_dir = Path(log_dir)
    vectors = np.asarray(vectors, dtype=np.float32)
    if len(metadata) != len(vectors):
        raise ValueError(f"{len(metadata)} metadata rows for {len(vectors)} vectors")
    tensor_buf = io.StringIO()
    np.savetxt(tensor_buf, vectors, delimiter="\t", fmt="%.6g")
    write_text(log_dir / "tensors.tsv", tensor_buf.getvalue())
    clean = metadata.astype(str).apply(lambda col: col.str.replace(r"[\t\n\r]", " ", regex=True))
    write_text(log_dir / "metadata.tsv", clean.to_csv(sep="\t", index=False, lineterminator="\n"))
    lines = [
        "embeddings {",
        f'  tensor_name: "{name}"',
        '  tensor_path: "tensors.tsv"',
        '  metadata_path: "metadata.tsv"',
        f"  tensor_shape: {vectors.shape[0]}",
        f"  tensor_shape: {vectors.shape[1]}",
    ]
    if thumbnails is not None and len(thumbnails):
        sprite, cell = sprite_image(np.asarray(thumbnails, dtype=np.uint8))
        buf = io.BytesIO()
        Image.fromarray(sprite).save(buf, format="PNG")
        write_bytes(log_dir / "sprite.png", buf.getvalue())
        lines += ["  sprite {", '    image_path: "sprite.png"', *[f"    single_image_dim: {cell}"] * 2, "  }"]
    lines.append("}")
    return write_text(log_dir / "projector_config.pbtxt", "\n".join(lines) + "\n")
