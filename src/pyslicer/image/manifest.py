"""manifest.json: what an image was built from, and what it contains."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Bump when the builder changes what it produces from the same inputs.
FORMAT_VERSION = 1

MANIFEST = "manifest.json"
KERNEL_FILES = ("vmlinux", "vmlinuz")
INITRD = "initrd.gz"
ROOTFS = "rootfs.ext4"

# Which input groups each output is made from; an output whose groups are unchanged is reused.
OUTPUT_INPUTS: dict[str, tuple[str, ...]] = {
    "vmlinux": ("format", "kernel"),
    "vmlinuz": ("format", "kernel"),
    INITRD: ("format", "kernel", "initrd"),
    ROOTFS: ("format", "rootfs"),
}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def normalize(value: Any) -> Any:
    """What `value` reads back as from JSON (tuples become lists), for comparisons."""
    return json.loads(json.dumps(value, sort_keys=True))


def image_label(manifest: Mapping[str, Any]) -> str:
    """A name for the guest image a manifest describes: its distribution and the digest of its rootfs (the
    same digest names the pinned base under the VM's overlay)."""
    inputs = manifest.get("inputs")
    rootfs = inputs.get("rootfs") if isinstance(inputs, Mapping) else None
    rootfs = rootfs if isinstance(rootfs, Mapping) else {}
    outputs = manifest.get("outputs")
    built = outputs.get(ROOTFS) if isinstance(outputs, Mapping) else None
    digest = built.get("sha256") if isinstance(built, Mapping) else None
    name = "-".join(str(rootfs[key]) for key in ("suite", "arch") if isinstance(rootfs.get(key), str)) or "unknown"
    return f"pyslicer/debian-{name}@sha256:{digest}" if isinstance(digest, str) else f"pyslicer/debian-{name}"


def kernel_file(manifest: Mapping[str, Any]) -> str | None:
    outputs = manifest.get("outputs")
    if not isinstance(outputs, dict):
        return None
    return next((name for name in KERNEL_FILES if name in outputs), None)


def inputs_match(manifest: Mapping[str, Any], inputs: Mapping[str, Any]) -> bool:
    return bool(manifest.get("inputs") == normalize(inputs))


def outputs_present(directory: Path, manifest: Mapping[str, Any]) -> bool:
    """Every recorded output exists with its recorded size, and there is a kernel, initrd and rootfs."""
    outputs = manifest.get("outputs")
    if not isinstance(outputs, dict) or kernel_file(manifest) is None:
        return False
    if INITRD not in outputs or ROOTFS not in outputs:
        return False
    for name, info in outputs.items():
        try:
            if os.stat(directory / name).st_size != info["size"]:
                return False
        except (OSError, KeyError, TypeError):
            return False
    return True


def is_current(directory: Path, manifest: Mapping[str, Any] | None, inputs: Mapping[str, Any]) -> bool:
    return manifest is not None and inputs_match(manifest, inputs) and outputs_present(directory, manifest)


def reusable_outputs(manifest: Mapping[str, Any] | None, inputs: Mapping[str, Any]) -> set[str]:
    """Outputs of an earlier build whose input groups equal the current ones."""
    if manifest is None:
        return set()
    old_inputs = manifest.get("inputs")
    outputs = manifest.get("outputs")
    if not isinstance(old_inputs, dict) or not isinstance(outputs, dict):
        return set()
    new_inputs = normalize(inputs)
    return {
        name
        for name in outputs
        if name in OUTPUT_INPUTS
        and all(g in new_inputs and old_inputs.get(g) == new_inputs[g] for g in OUTPUT_INPUTS[name])
    }


def load(directory: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write(directory: Path, manifest: Mapping[str, Any]) -> None:
    tmp = directory / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, directory / MANIFEST)
