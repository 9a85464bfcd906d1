"""The official MW-MAE fixtures copied into tests/data/reference (see its README), shared by the
converter and parity tests. The `*_ckpt/checkpoint_0` files are stored gzipped; the checksums
are those of the reference's original bytes."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

REF = Path(__file__).parent / "data" / "reference"
CKPT_SHA256 = {
    "mae_small_4x16_cls": "b71e567c0a48df2b33b1cb166fab95fedecef362b3d3acb76cdcf450b14d7da0",
    "mwmae_small_4x16_shift": "d89c7695b69beb6a9c920d491bd00700ceb1096433e84144c23a80059d2aee78",
    "mwmae_small_8x16_encdec_shift": "85fb05f19e530d78595f4af3024f28e87a1662197d55285cce9a31b142bf930d",  # noqa: E501
}
STEMS = list(CKPT_SHA256)


def reference_run_dir(stem: str, root: Path) -> Path:
    """The fixture's reference run directory, checkpoint decompressed (and checksummed)."""
    run = root / f"{stem}_ckpt"
    if not (run / "checkpoint_0").exists():
        run.mkdir(parents=True, exist_ok=True)
        shutil.copy(REF / f"{stem}_ckpt" / "config.json", run / "config.json")
        data = gzip.decompress((REF / f"{stem}_ckpt" / "checkpoint_0.gz").read_bytes())
        assert hashlib.sha256(data).hexdigest() == CKPT_SHA256[stem]
        (run / "checkpoint_0").write_bytes(data)
    return run
