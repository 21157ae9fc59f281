#!/usr/bin/env python3
"""Writes the seed corpus: a handful of valid, realistic inputs per fuzz target, in the input
formats documented at the top of each target (fuzz/fuzz_targets/*.rs).

    python3 fuzz/seeds.py            # writes fuzz/corpus/<target>/seed-*
Stdlib only; deterministic (fixed gzip mtime, fixed tar/zip timestamps).
"""

import gzip
import io
import json
import os
import struct
import tarfile
import zipfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")

DOC_EXAMPLE = {
    "responseId": "66d23c0cede77d82",
    "responseTime": "2024-05-25T08:40:00.000Z",
    "status": "ok",
    "items": [
        {
            "serial": "10",
            "id": "abcABC0123-_abcABC0123-_abcABC0123-_",
            "classification": "jmafile.rdr-nc5min",
            "headers": [
                {
                    "time": "2024-05-25T08:35:00Z",
                    "flags": {"product": "Z", "oflag": "C"},
                    "author": "RJTD",
                    "format": "grib2",
                    "length": 1234,
                    "values": ["RDR", "GPV", "Ggis1km", "Phhlv", "Aper5min", "ANAL"],
                    "filename": "Z__C_RJTD_20240525083500_RDR_GPV_Ggis1km_Phhlv_Aper5min_ANAL_grib2.bin.gz",
                }
            ],
            "receivedTime": "2024-05-25T08:35:31.123Z",
            "format": "grib2",
            "compression": "gzip",
            "url": "https://jmafiledata.api.dmdata.jp/v1/abcABC0123-_abcABC0123-_abcABC0123-_",
        }
    ],
    "nextPooling": "cG9sbGluZyAgICAgNzM0MzE",
    "nextPoolingInterval": "1600",
}

CONCAT_ITEM = {
    "serial": 11,
    "id": "concatID0123456789",
    "classification": "jmafile.shape",
    "headers": [
        {"filename": "Z__C_RJTD_20240525000000_SHP_area.tar.gz", "length": "426", "format": "concat"},
        {"filename": "area.dbf", "length": 226, "flags": {"product": "Z", "originator": "J", "productIdentifier": "A"}},
        {"filename": "area.shp", "length": 100},
        {"filename": "area.shx", "length": " 100 "},
    ],
    "receivedTime": "2024-05-25T17:35:31+09:00",
    "format": "concat",
    "compression": None,
    "url": "https://jmafiledata.api.dmdata.jp/v1/concatID0123456789",
}

ARCHIVE_LIST = {
    "responseId": "x",
    "status": "ok",
    "items": [
        {
            "serial": "0",
            "id": "123456789abcdef",
            "classification": "telegram.weather",
            "date": "2023-04-01",
            "dataCount": "596",
            "fileSize": 1525510,
            "url": "https://data.api.dmdata.jp/v1/archive/123456789abcdef",
        }
    ],
    "nextToken": "bmV4dA",
}

SOCKET_LIST = {
    "status": "ok",
    "items": [
        {
            "id": "4567",
            "ticket": None,
            "classifications": ["telegram.earthquake"],
            "test": "no",
            "types": ["VXSE51"],
            "formats": ["json"],
            "appName": "jma-poller",
            "start": "2024-05-25T08:00:00Z",
            "end": None,
            "ping": "2024-05-25T08:40:00Z",
            "ipAddress": "192.0.2.1",
            "server": "ws001",
            "status": "open",
        }
    ],
}

HOSTILE = {
    "status": "ok",
    "items": [
        dict(DOC_EXAMPLE["items"][0], id="h1", headers=[{"filename": "../../etc/passwd", "length": 1}]),
        dict(DOC_EXAMPLE["items"][0], id="h2", serial=-1),
        dict(DOC_EXAMPLE["items"][0], id="h3", url="https://evil.example/v1/x"),
        dict(CONCAT_ITEM, id="h4", headers=CONCAT_ITEM["headers"][:2] + [{"filename": "area.dbf", "length": 1}]),
        {"id": "h5", "serial": "12"},
    ],
    "nextPooling": "x",
    "nextPoolingInterval": 1.5,
}

TELEGRAMS = [
    {
        "id": "tg%02d" % i,
        "classification": "telegram.weather",
        "head": {"type": "VPWW54", "author": "RJTD", "time": "2023-04-01T00:%02d:00Z" % i},
        "xmlReport": {"control": {"title": "気象警報・注意報（Ｈ２７）"}},
        "format": "xml",
        "file": "tg%02d.xml" % i,
    }
    for i in range(2)
]


def xml_body(i):
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Report><Control><Title>気象警報・注意報</Title>'
        "<DateTime>2023-04-01T00:%02d:00Z</DateTime></Control><Body>%s</Body></Report>\n" % (i, "x" * 40)
    ).encode()


def gz(data):
    return gzip.compress(data, mtime=0)


def tar_of(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
            else:
                info.size = len(data)
            info.mtime = 1680307200
            info.mode = 0o644
            t.addfile(info, None if data is None else io.BytesIO(data))
    return buf.getvalue()


def tar_with_metadata(fmt):
    """A real writer's metadata records: PAX (a global header, an x header for the long name)
    or GNU (an L record for the long name, a K record for the long link target)."""
    buf = io.BytesIO()
    long = "VXSE53_RJTD_20250212150002514_0c1f04f_" + "0" * 107 + ".xml"
    headers = {"comment": "seed"} if fmt == tarfile.PAX_FORMAT else {}
    with tarfile.open(fileobj=buf, mode="w", format=fmt, pax_headers=headers) as t:
        for name, data in [("telegrams.json", b'[{"id":"0c1f04f0"}]'), (long, xml_body(1))]:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1680307200, 0o644
            t.addfile(info, io.BytesIO(data))
        if fmt == tarfile.GNU_FORMAT:
            link = tarfile.TarInfo("link.xml")
            link.type, link.linkname, link.mtime = tarfile.SYMTYPE, "/" + "t" * 149, 1680307200
            t.addfile(link)
    return buf.getvalue()


def zip_of(name, data):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(zipfile.ZipInfo(name, date_time=(2024, 5, 25, 8, 35, 0)), data, zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def u24(n):
    return struct.pack("<I", n)[:3]


def archive_tar():
    return tar_of(
        [("telegrams.json", json.dumps(TELEGRAMS, ensure_ascii=False).encode())]
        + [("tg%02d.xml" % i, xml_body(i)) for i in range(2)]
    )


# --- unpack_tar structured members (fuzz_support::Member::parse) ---
KIND = {"file": 0, "dir": 1, "symlink": 2, "hardlink": 3, "pax": 4, "longname": 5, "global": 6, "longlink": 10}


def pax_rec(key, value):
    """One PAX record, its length counting itself."""
    rest = len(key) + len(value) + 3
    n = rest + 1
    while rest + len(str(n)) != n:
        n = rest + len(str(n))
    return b"%d %s=%s\n" % (n, key, value)


def member(kind, name, data=b"", link=None, size=None):
    flags = (1 if link is not None else 0) | (2 if size is not None else 0)
    out = bytes([KIND[kind], flags, len(name)]) + name
    if link is not None:
        out += bytes([len(link)]) + link
    if size is not None:
        out += u24(size)
    return out + struct.pack("<H", len(data)) + data


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def main():
    j = lambda v: json.dumps(v, ensure_ascii=False, indent=1).encode()
    write("list_response", "doc-example", j(DOC_EXAMPLE))
    write("list_response", "concat", j({"status": "ok", "items": [CONCAT_ITEM], "nextPooling": "p"}))
    write("list_response", "archive", j(ARCHIVE_LIST))
    write("list_response", "socket", j(SOCKET_LIST))
    write("list_response", "hostile", j(HOSTILE))
    write("list_response", "error", j({"status": "error", "error": {"message": "Unauthorized", "code": "401"}}))

    text = b"GRIB" + bytes(range(256)) * 8 + b"7777"
    parts = [b"\x01" * 226, b"\x02" * 100, b"\x03" * 100]
    joined = b"".join(parts)
    lens = bytes([3]) + b"".join(u24(len(p)) for p in parts)
    write("decode_body", "plain", bytes([0, 0]) + text)
    write("decode_body", "gzip-wrapped", bytes([1 | 4, 0]) + text)
    write("decode_body", "gzip-2-members", bytes([1, 0]) + gz(text[:1000]) + gz(text[1000:]))
    write("decode_body", "zip-wrapped", bytes([2 | 4, 0, 1]) + text)
    write("decode_body", "zip-raw", bytes([2, 0]) + zip_of("inner.bin", text))
    write("decode_body", "concat-plain", bytes([2 << 3, 0]) + lens + joined)
    write("decode_body", "concat-gzip-wrapped", bytes([1 | 4 | (2 << 3), 0]) + lens + joined)
    write("decode_body", "concat-gzip-raw", bytes([1 | (2 << 3), 0]) + lens + gz(joined))
    write("decode_body", "archive-raw", bytes([3, 0, 2 | 4]) + struct.pack("<H", 2) + gz(archive_tar()))
    write("decode_body", "archive-wrapped", bytes([3 | 4, 0, 0]) + archive_tar())
    write("decode_body", "bomb", bytes([1, 10]) + gz(bytes(100_000)))
    write("decode_body", "short-reads-reset", bytes([1 | 4 | 32 | 64, 0, 6]) + text)
    write("decode_body", "cancelled", bytes([1 | 4 | 128, 0, 3]) + text)
    write("decode_body", "single-announced", bytes([1 | 4 | (1 << 3), 0]) + u24(len(text)) + text)

    write("unpack_tar", "raw", bytes([0]) + archive_tar())
    write("unpack_tar", "gzip-archive", bytes([1 | 8]) + archive_tar())
    nested = tar_of([("sub", None), ("sub/a.xml", xml_body(0)), ("telegrams.json", b"[{}]")])
    write("unpack_tar", "raw-nested", bytes([0]) + nested)
    plain = (
        member("file", b"telegrams.json", json.dumps(TELEGRAMS[:1]).encode())
        + member("file", b"tg00.xml", xml_body(0))
    )
    write("unpack_tar", "members", bytes([2]) + plain)
    write("unpack_tar", "members-gzip", bytes([3]) + plain)
    hostile = (
        member("dir", b"d")
        + member("file", b"d/ok.xml", b"ok")
        + member("symlink", b"evil", link=b"/")
        + member("file", b"evil/x", b"x")
        + member("file", b"../escape", b"x")
        + member("hardlink", b"h", link=b"d/ok.xml")
        + member("pax", b"pax", b"20 path=../../pwned\n")
        + member("file", b"liar", b"abc", size=70000)
    )
    write("unpack_tar", "members-hostile", bytes([2]) + hostile)
    write("unpack_tar", "members-capped", bytes([2 | 4]) + struct.pack("<H", 100) + plain)
    write("unpack_tar", "raw-pax-global-longname", bytes([0]) + tar_with_metadata(tarfile.PAX_FORMAT))
    write("unpack_tar", "raw-gnu-longname-longlink", bytes([0]) + tar_with_metadata(tarfile.GNU_FORMAT))
    write("unpack_tar", "gzip-pax-global-longname", bytes([1]) + tar_with_metadata(tarfile.PAX_FORMAT))
    metadata = (
        member("global", b"pax_global_header", pax_rec(b"comment", b"seed"))
        + member("longname", b"././@LongLink", b"sub-long-name.xml\0")
        + member("file", b"short.xml", b"long")
        + member("pax", b"PaxHeaders/x", pax_rec(b"path", b"pax.xml"))
        + member("file", b"pax-short", b"pax")
        + member("longlink", b"././@LongLink", b"/etc/passwd\0")
        + member("file", b"after-longlink.xml", b"k")
        + member("pax", b"PaxHeaders/y", pax_rec(b"path", b"../../pax-pwned"))
        + member("file", b"y", b"y")
    )
    write("unpack_tar", "members-metadata", bytes([2]) + metadata)
    write("unpack_tar", "members-metadata-gzip", bytes([3]) + metadata)

    name = b"Z__C_RJTD_20240525083500_RDR_GPV_Ggis1km_Phhlv_Aper5min_ANAL_grib2.bin"
    ident = b"abcABC0123-_abcABC0123-_abcABC0123-_"
    write("names", "jmafile", bytes([len(name) // 2]) + name + ident)
    write("names", "no-ext", bytes([3]) + b"README" + b"id-1")
    write("names", "hostile", bytes([4]) + b"../etc/passwd" + b"x")
    write("names", "unicode", bytes([9]) + "気象警報.xml".encode() + b"q")


if __name__ == "__main__":
    main()
