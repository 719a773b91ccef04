"""A small glTF 2.0 binary builder over pygltflib: typed arrays appended to one buffer as accessors, then the
whole document written as .glb. Shared by the skeleton and the mesh exports."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dynapose4d.core.io import write_bytes

FLOAT, USHORT, UINT = 5126, 5123, 5125  # accessor component types
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963  # buffer view targets (vertex attributes, indices)
_DTYPES = {FLOAT: "<f4", USHORT: "<u2", UINT: "<u4"}


class GlbBuilder:
    """`gltf` is the pygltflib document to fill; `accessor` stores an array in the binary chunk, `view` raw bytes;
    `save` writes."""

    def __init__(self) -> None:
        import pygltflib as g

        self.g = g
        self.gltf = g.GLTF2(asset=g.Asset(version="2.0", generator="dynapose4d"))
        self.blob = bytearray()

    def _align(self) -> None:
        while len(self.blob) % 4:
            self.blob.append(0)

    def accessor(self, data: np.ndarray, ctype: int, kind: str, target: int | None = None, minmax: bool = False
                 ) -> int:
        """Index of a new accessor holding `data` [count, ...] as `ctype` ("SCALAR", "VEC3", "MAT4", ...);
        `minmax` records the per-component bounds (required for POSITION and animation inputs)."""
        g = self.g
        arr = np.ascontiguousarray(data, dtype=_DTYPES[ctype])
        self._align()
        self.gltf.bufferViews.append(g.BufferView(buffer=0, byteOffset=len(self.blob), byteLength=arr.nbytes,
                                                  target=target))
        self.blob.extend(arr.tobytes())
        count = arr.shape[0]
        acc = g.Accessor(bufferView=len(self.gltf.bufferViews) - 1, componentType=ctype, count=count, type=kind)
        if minmax:
            flat = arr.reshape(count, -1)
            acc.min, acc.max = flat.min(0).tolist(), flat.max(0).tolist()
        self.gltf.accessors.append(acc)
        return len(self.gltf.accessors) - 1

    def view(self, data: bytes) -> int:
        """Index of a new buffer view holding raw bytes (an embedded image)."""
        self._align()
        self.gltf.bufferViews.append(self.g.BufferView(buffer=0, byteOffset=len(self.blob), byteLength=len(data)))
        self.blob.extend(data)
        return len(self.gltf.bufferViews) - 1

    def save(self, path: str | Path) -> Path:
        """Write the document and its buffer as one .glb (atomically)."""
        self._align()
        self.gltf.buffers.append(self.g.Buffer(byteLength=len(self.blob)))
        self.gltf.set_binary_blob(bytes(self.blob))
        return write_bytes(Path(path), b"".join(self.gltf.save_to_bytes()))
