"""safetensors files without holding a second copy of the weights in memory.

``safetensors.torch.load_file`` reads every tensor into fresh memory and ``save_file`` turns every
tensor into a ``bytes`` object before it writes anything, so either one needs the whole checkpoint
in anonymous memory on top of wherever the tensors already live. For multi-GB checkpoints that is
the difference between a conversion that fits and one that does not:

- :func:`load_mapped` maps the file (copy-on-write: the file itself never changes) and returns one
  tensor per entry, each with its own storage viewing its slice of the mapping. Pages are read
  from disk when touched and, being file-backed, the kernel can drop them again under pressure.
  Separate storages matter: ``torch.save`` writes a tensor's whole storage, so views into one big
  storage would each drag the entire file into a ``.pth``.
- :func:`save_streaming` writes the file tensor by tensor, byte for byte what ``save_file`` writes
  (same header, same order: dtype by descending rank, then name; the tests compare the bytes).
"""
import json
import os
import struct

import numpy as np
import torch

# safetensors' dtype names, in the order of its Rust ``Dtype`` enum (the writer sorts by it, descending)
_DTYPES = [
    (torch.bool, "BOOL"), (torch.uint8, "U8"), (torch.int8, "I8"),
    (getattr(torch, "float8_e5m2", None), "F8_E5M2"), (getattr(torch, "float8_e4m3fn", None), "F8_E4M3"),
    (torch.int16, "I16"), (getattr(torch, "uint16", None), "U16"), (torch.float16, "F16"),
    (torch.bfloat16, "BF16"), (torch.int32, "I32"), (getattr(torch, "uint32", None), "U32"),
    (torch.float32, "F32"), (torch.float64, "F64"), (torch.int64, "I64"), (getattr(torch, "uint64", None), "U64"),
]
_NAME = {t: n for t, n in _DTYPES if t is not None}
_RANK = {n: i for i, (_, n) in enumerate(_DTYPES)}
_TORCH = {n: t for t, n in _DTYPES if t is not None}


def _header_size_and_bytes(header):
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors pads it
    return struct.pack("<Q", len(text)) + text


def save_streaming(tensors, path, metadata=None, progress=None):
    """Write ``{name: tensor}`` (CPU tensors, any strides) to ``path`` in the safetensors format,
    one tensor at a time: at most one tensor's contiguous copy is held beyond the inputs.
    ``progress(iterable)`` may wrap the per-tensor loop (a progress bar)."""
    for name, t in tensors.items():
        if t.dtype not in _NAME:
            raise ValueError(f"{name}: dtype {t.dtype} has no safetensors name")
        if t.device.type != "cpu":
            raise ValueError(f"{name}: tensor on {t.device}, expected cpu")
    order = sorted(tensors, key=lambda k: (-_RANK[_NAME[tensors[k].dtype]], k))
    header, offset = {}, 0
    if metadata is not None:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name in order:
        t = tensors[name]
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": _NAME[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    with open(path, "wb") as f:
        f.write(_header_size_and_bytes(header))
        for name in (progress(order) if progress else order):
            t = tensors[name].detach()
            if t.numel() == 0:
                continue
            t = t.contiguous()  # a no-op for the usual contiguous tensor; else one tensor's copy
            f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return path


def load_mapped(path):
    """``{name: tensor}`` of a safetensors file, every tensor backed by a copy-on-write mapping of
    the file (nothing is read until used). Raises ValueError for a malformed file."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("file shorter than its 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100 * 2**20:
            raise ValueError(f"header length {n} does not fit the file ({size} bytes)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, ValueError) as e:
            raise ValueError(f"header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    header.pop("__metadata__", None)
    start = 8 + n
    entries = []
    for name, info in header.items():
        try:
            dtype = _TORCH[info["dtype"]]
            shape = [int(s) for s in info["shape"]]
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{name}: bad header entry {info!r}") from None
        nbytes = int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
        if end - begin != nbytes or begin < 0 or start + end > size:
            raise ValueError(f"{name}: data_offsets {[begin, end]} do not hold {info['dtype']} {shape} "
                             f"within the file ({size} bytes; truncated?)")
        entries.append((name, dtype, shape, begin, end))
    mapped = np.memmap(path, dtype=np.uint8, mode="c") if size > start else None
    out = {}
    for name, dtype, shape, begin, end in entries:
        if end == begin:
            out[name] = torch.empty(shape, dtype=dtype)
            continue
        # from_numpy of a slice: a storage of exactly this tensor's bytes, keeping the mapping alive
        raw = torch.from_numpy(mapped[start + begin:start + end])
        out[name] = raw.view(dtype).reshape(shape)
    return out
