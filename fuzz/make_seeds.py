#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/corpus/ (no torch needed: the torch pickle
layout is reproduced with stand-in classes). Run from the repository root."""
import collections, io, json, os, pickle, struct, sys, types, zipfile, zlib

C = "fuzz/corpus"

# Stand-ins pickled under torch's names.
torch = types.ModuleType("torch"); sys.modules["torch"] = torch
utils = types.ModuleType("torch._utils"); sys.modules["torch._utils"] = utils
def _rebuild_tensor_v2(*a): pass
_rebuild_tensor_v2.__module__ = "torch._utils"; utils._rebuild_tensor_v2 = _rebuild_tensor_v2
class Storage:
    def __init__(self, kind, key, n): self.kind, self.key, self.n = kind, key, n
for kind in ["FloatStorage", "HalfStorage", "LongStorage", "BFloat16Storage"]:
    cls = type(kind, (), {"__module__": "torch"}); setattr(torch, kind, cls)
class Tensor:
    def __init__(self, st, off, shape, stride): self.a = (st, off, shape, stride)
    def __reduce__(self):
        st, off, shape, stride = self.a
        return (_rebuild_tensor_v2, (st, off, shape, stride, False, collections.OrderedDict()))
class P(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", getattr(torch, obj.kind), obj.key, "cpu", obj.n)
        return None
def dumps(obj, proto=2):
    b = io.BytesIO(); P(b, protocol=proto).dump(obj); return b.getvalue()

def w(path, data):
    with open(os.path.join(C, path), "wb") as f: f.write(data)

flat = collections.OrderedDict([
    ("weight", Tensor(Storage("FloatStorage", "0", 16), 0, (4, 4), (4, 1))),
    ("bias", Tensor(Storage("FloatStorage", "0", 16), 12, (4,), (1,))),
    ("module.t", Tensor(Storage("FloatStorage", "0", 16), 0, (2, 2), (1, 2))),
])
nested = {"trainer": {"var_wo_ddp": flat, "vae_local": collections.OrderedDict(
    [("q", Tensor(Storage("FloatStorage", "0", 16), 0, (16,), (1,)))])}, "args": None}
w("pickle/flat-state-dict-p2.pkl", dumps(flat, 2))
w("pickle/nested-checkpoint-p4.pkl", dumps(nested, 4))
w("pickle/plain-values-p0.pkl", pickle.dumps({"a": [1, 2.5, "x", (True, None)], "b": b"\x00"}, 0))
w("pickle/plain-values-p5.pkl", pickle.dumps({"n": 1 << 70, "l": list(range(5))}, 5))

def pth(pkl, storages):
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/byteorder", "little")
        for k, v in storages.items(): z.writestr("archive/data/" + k, v)
        z.writestr("archive/version", "3\n")
    return b.getvalue()
st = struct.pack("<16f", *[i / 4 for i in range(16)])
w("pth/flat.pth", pth(dumps(flat, 2), {"0": st}))
w("pth/nested.pth", pth(dumps(nested, 2), {"0": st}))
half = collections.OrderedDict([("h", Tensor(Storage("HalfStorage", "1", 4), 0, (2, 2), (2, 1))),
                                ("i", Tensor(Storage("LongStorage", "2", 2), 0, (2,), (1,)))])
w("pth/half-long.pth", pth(dumps(half, 2), {"1": b"\x00\x3c" * 4, "2": struct.pack("<2q", 3, -1)}))

def safet(tensors):
    hdr, data = {"__metadata__": {"format": "pt"}}, b""
    for name, (dt, shape, raw) in tensors.items():
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(hdr).encode(); h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data
w("safetensors/f32.safetensors", safet({"weight": ("F32", [2, 2], struct.pack("<4f", 1, 2, 3, 4))}))
w("safetensors/mixed.safetensors", safet({"a": ("F16", [3], b"\x00\x3c" * 3), "b": ("BF16", [1], b"\x80\x3f"),
                                         "c": ("I64", [2], struct.pack("<2q", 1, 2)), "module.d": ("F32", [0], b"")}))

def png(w_, h, bit, ctype, rows, plte=None, trns=None):
    def chunk(t, d): return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w_, h, bit, ctype, 0, 0, 0))
    if plte: out += chunk(b"PLTE", plte)
    if trns: out += chunk(b"tRNS", trns)
    return out + chunk(b"IDAT", zlib.compress(b"".join(b"\x00" + r for r in rows))) + chunk(b"IEND", b"")
w("png/rgb8-2x2.png", png(2, 2, 8, 2, [b"\xff\x00\x00\x00\xff\x00", b"\x00\x00\xff\xff\xff\xff"]))
w("png/rgba16-2x1.png", png(2, 1, 16, 6, [b"\xff\xff\x00\x00\x00\x00\x80\x00" + b"\x00\x00\xff\xff\x00\x00\xff\xff"]))
w("png/palette-trns-3x1.png", png(3, 1, 8, 3, [b"\x00\x01\x02"], plte=b"\xff\x00\x00\x00\xff\x00\x00\x00\xff", trns=b"\x80"))
w("png/gray1-8x1.png", png(8, 1, 1, 0, [b"\xa5"]))
w("png/gray-alpha8-1x1.png", png(1, 1, 8, 4, [b"\x40\x80"]))
w("png/gray16-1x2.png", png(1, 2, 16, 0, [b"\x12\x34", b"\xff\xff"]))

# srdd_model: first byte = sampling knobs (bit 5: sample, bit 6: decode too), then mutation ops
# (see fuzz/src/lib.rs `mutate`).
w("srdd_model/unmutated", b"\x00")
w("srdd_model/unmutated-sampled", b"\x20")
w("srdd_model/unmutated-chunked", b"\x2d")
w("srdd_model/unmutated-decoded", b"\x6d")
w("srdd_model/config-byte", b"\x21\x00\x05\x00\x01")
w("srdd_model/shape-dim", b"\x22\x02\x03\x00\x01\x01\x05")
w("srdd_model/offset-delta", b"\x23\x03\x07\x00\x00\x01\x02")
w("srdd_model/metadata-append", b"\x24\x07\x00\x17\nclass_names=a,b,c,d,e\n")
w("srdd_model/tensor-nan", b"\x65\x08\x00\x10\x00\x00\x01\x00")
w("srdd_model/raw-flip", b"\x06\x09\x40\x00\x01")
w("srdd_model/label-out-of-range", b"\xa0")

# edit_upscale: 10 option bytes (flags, feather, keep-steps, box x0 y0 x1 y1, box count, label,
# seed; see fuzz/src/lib.rs `edit_upscale`), the image PNG with a u16 length, the mask PNG.
# The tiny model takes 8x8 images (upscale: 2x2, 4x4); the built-in one 32x32 (4x4, 8x8, 16x16).
def rgb(n):  # RGB 8-bit pattern
    return png(n, n, 8, 2, [b"".join(bytes(((x * 37) % 256, (y * 53) % 256, ((x + y) * 11) % 256))
                                     for x in range(n)) for y in range(n)])
def half_mask(n):  # gray 8-bit: left half white (generate), right half black (keep)
    return png(n, n, 8, 0, [bytes(255 if x < n // 2 else 0 for x in range(n)) for _ in range(n)])
def palette_mask(n):  # palette: a white square in the middle
    return png(n, n, 8, 3, [bytes(1 if n // 4 <= x < 3 * n // 4 and n // 4 <= y < 3 * n // 4 else 0 for x in range(n)) for y in range(n)],
               plte=b"\x00\x00\x00\xff\xff\xff")
def eu(name, flags, image, mask=b"", feather=0, keep=0, box=(0, 0, 0, 0), nbox=0, label=1, seed=0):
    w("edit_upscale/" + name, bytes([flags, feather, keep, *box, nbox, label, seed]) + struct.pack("<H", len(image)) + image + mask)
GEN, BUILTIN, INVERT = 0x10, 0x08, 0x04
eu("edit-mask-tiny", GEN, rgb(8), half_mask(8), feather=2)
eu("edit-palette-mask-tiny", 0, rgb(8), palette_mask(8))
eu("edit-box-tiny", GEN | 1, rgb(8), box=(2, 2, 6, 6))
eu("edit-box-invert-feather-tiny", INVERT | 1, rgb(8), box=(1, 3, 7, 5), feather=3)
eu("edit-mask-and-box-tiny", 2, rgb(8), half_mask(8), box=(2, 2, 6, 6))
eu("upscale-2-tiny", GEN | 3, rgb(2))
eu("upscale-4-keep2-tiny", 3, rgb(4), keep=3)
eu("edit-mask-builtin", BUILTIN, rgb(32), palette_mask(32), feather=5)
eu("upscale-8-builtin", BUILTIN | 3, rgb(8))

w("safetensors/i8-u8-3d.safetensors", safet({"q": ("I8", [1, 2, 2], b"\x01\xff\x7f\x80"), "u": ("U8", [2], b"\x00\xff")}))
