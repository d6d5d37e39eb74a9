#!/usr/bin/env python3
"""Hostile .pth files for issue #13 (quadratic unpickling, deflate bombs): the inputs behind the
before/after figures of docs/RELIABILITY.md. Usage: hostile_pth.py OUT_DIR, then for each file
`/usr/bin/time -v srdd-tools pack --vae OUT_DIR/FILE --var tests/fixtures/tiny-six-scales/var.pth
-o /tmp/x.srdd` (max RSS; the pack itself then fails: the files hold no tensors)."""
import os, sys, zipfile

OUT = sys.argv[1] if len(sys.argv) > 1 else "/tmp/hostile"
os.makedirs(OUT, exist_ok=True)

def items(n):  # MARK, one int, DUP x (n-1), APPENDS: 1 byte per item
    return b"(K\x01" + b"2" * (n - 1) + b"e"

def list_copies(size, fn=b"list"):
    # memo0 = [1]*L ; memo1 = builtins.<fn> ; R x (memo1(memo0)) ; POP
    L = size // 2
    R = (size - L) // 7
    p = b"\x80\x02]q\x00" + items(L) + b"0cbuiltins\n" + fn + b"\nq\x01"
    p += b"h\x01h\x00\x85R0" * R
    return p + b"}."

def reduce_args(size):
    # memo0 = tuple of L items ; R x __main__.f(*memo0)
    L = size // 2
    R = (size - L) // 6
    p = b"\x80\x02(K\x01" + b"2" * (L - 1) + b"tq\x00c__main__\nf\nq\x01"
    p += b"h\x01h\x00R0" * R
    return p + b"}."

def none_flood(n):
    return b"\x80\x02" + b"N" * n + b"}."

def write(path, pkl, compress=False):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl, compresslevel=9 if compress else None)
        z.writestr("archive/byteorder", b"little")
    print(path, os.path.getsize(path))

for kb in (57, 78, 400):
    write(f"{OUT}/list_{kb}k.pth", list_copies(kb * 1000))
write(f"{OUT}/reduce_220k.pth", reduce_args(220_000))
write(f"{OUT}/none_100m.pth", none_flood(100_000_000), compress=True)
write(f"{OUT}/none_60m.pth", none_flood(60_000_000), compress=False)
