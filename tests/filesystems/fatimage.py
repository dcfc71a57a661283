"""Write files into a FAT32 image the way a Chinese camera's firmware does: names in GBK.

FAT keeps two kinds of names.  A long name (LFN) is UTF-16 and carries no
code page.  A short 8.3 name (SFN) is bytes in the writer's OEM code page:
camera firmware built on FatFs with ``FF_CODE_PAGE = 936`` writes the GBK
bytes of a Chinese name there, and many cameras write short names only
(``FF_USE_LFN = 0``): ``执法01.MP4`` is ``D6 B4 B7 A8 30 31 20 20 4D 50 34``
on disk, with no Unicode anywhere.  Linux tools do not write such names
(fusefat writes only ASCII short names, mtools converts from the locale),
so this module writes the directory entries itself into an image formatted
by ``mkfs.vfat -F 32``: a short-name-only entry with GBK bytes, or long-name
entries plus a GBK short alias (``执法记~1.MP4``), as FatFs does.  A lead
byte 0xE5 is stored as 0x05 (0xE5 marks a deleted entry).  ``fsck.vfat -n``
checks every image the tests make.

Only what the tests need: create directories and files, contiguous clusters,
no deletion; the FSInfo free count and next-free hint are kept right.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

_DIR, _ARCHIVE, _LFN = 0x10, 0x20, 0x0F
_EOC = 0x0FFFFFFF
_DATE = ((2024 - 1980) << 9) | (1 << 5) | 5  # 2024-01-05
_TIME = (8 << 11) | (30 << 5) | (15 // 2)  # 08:30:14


def sfn_bytes(name: str, codepage: str = "gbk") -> bytes:
    """The 11-byte short name field of ``name`` (must fit 8.3 in ``codepage``)."""
    base, _, ext = name.rpartition(".") if "." in name else (name, "", "")
    raw_base, raw_ext = base.encode(codepage), ext.encode(codepage)
    if not 0 < len(raw_base) <= 8 or len(raw_ext) > 3 or name != name.upper():
        raise ValueError(f"{name!r} is not an upper-case 8.3 name in {codepage}")
    field = raw_base.ljust(8, b" ") + raw_ext.ljust(3, b" ")
    return b"\x05" + field[1:] if field[0] == 0xE5 else field


def _checksum(sfn: bytes) -> int:
    total = 0
    for byte in sfn:
        total = (((total & 1) << 7) + (total >> 1) + byte) & 0xFF
    return total


def _lfn_entries(long_name: str, sfn: bytes) -> list[bytes]:
    units = list(struct.unpack(f"<{len(long_name.encode('utf-16-le')) // 2}H",
                               long_name.encode("utf-16-le")))
    if len(units) % 13:
        units.append(0x0000)
    while len(units) % 13:
        units.append(0xFFFF)
    count = len(units) // 13
    check = _checksum(sfn)
    entries = []
    for i in range(count):
        part = units[i * 13:(i + 1) * 13]
        order = (i + 1) | (0x40 if i == count - 1 else 0)
        entries.append(struct.pack("<B5HBBB6HH2H", order, *part[0:5], _LFN, 0, check,
                                   *part[5:11], 0, *part[11:13]))
    return list(reversed(entries))  # the last part comes first on disk


def _short_entry(sfn: bytes, attr: int, cluster: int, size: int) -> bytes:
    return struct.pack("<11sBBBHHHHHHHI", sfn, attr, 0, 0, _TIME, _DATE, _DATE,
                       cluster >> 16, _TIME, _DATE, cluster & 0xFFFF, size)


@dataclass
class _Dir:
    clusters: list[int]
    cluster: int  # first cluster (0 for ".." of a child of the root)


class Fat32Image:
    """An image made by ``mkfs.vfat -F 32``, opened for adding files and directories."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.f = open(path, "r+b")  # noqa: SIM115 - closed by close()
        boot = self._read(0, 512)
        (self.bps,) = struct.unpack_from("<H", boot, 11)
        self.spc = boot[13]
        (self.reserved,) = struct.unpack_from("<H", boot, 14)
        self.nfats = boot[16]
        (total,) = struct.unpack_from("<I", boot, 32)
        (self.fat_sectors, root, self.fsinfo) = struct.unpack_from("<I4xIH", boot, 36)
        if self.fat_sectors == 0 or boot[82:87] != b"FAT32":
            raise ValueError(f"{path} is not a FAT32 image")
        self.first_data = self.reserved + self.nfats * self.fat_sectors
        self.cluster_bytes = self.bps * self.spc
        self.clusters = (total - self.first_data) // self.spc
        self.next_free = 2
        self.root = _Dir(self._chain(root), root)
        self.dirs: dict[str, _Dir] = {"": self.root}

    def close(self) -> None:
        fat = self._read(self.reserved * self.bps, (self.clusters + 2) * 4)
        free = sum(1 for (entry,) in struct.iter_unpack("<I", fat[8:]) if entry & 0x0FFFFFFF == 0)
        for sector in (self.fsinfo, self.fsinfo + 6):  # FSInfo and its backup
            self._write(sector * self.bps + 488, struct.pack("<II", free, self.next_free))
        self.f.close()

    def __enter__(self) -> Fat32Image:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- raw access -----------------------------------------------------------------------

    def _read(self, offset: int, size: int) -> bytes:
        self.f.seek(offset)
        return self.f.read(size)

    def _write(self, offset: int, data: bytes) -> None:
        self.f.seek(offset)
        self.f.write(data)

    def _fat(self, cluster: int) -> int:
        offset = self.reserved * self.bps + cluster * 4
        return int(struct.unpack("<I", self._read(offset, 4))[0]) & 0x0FFFFFFF

    def _set_fat(self, cluster: int, value: int) -> None:
        for copy in range(self.nfats):
            offset = (self.reserved + copy * self.fat_sectors) * self.bps + cluster * 4
            self._write(offset, struct.pack("<I", value))

    def _offset(self, cluster: int) -> int:
        return (self.first_data + (cluster - 2) * self.spc) * self.bps

    def _chain(self, first: int) -> list[int]:
        chain = [first]
        while (nxt := self._fat(chain[-1])) < 0x0FFFFFF8:
            chain.append(nxt)
        return chain

    def _allocate(self, count: int) -> list[int]:
        found: list[int] = []
        cluster = self.next_free
        while len(found) < count:
            if cluster >= self.clusters + 2:
                raise OSError("FAT image full")
            if self._fat(cluster) == 0:
                found.append(cluster)
            cluster += 1
        self.next_free = cluster
        for this, nxt in zip(found, [*found[1:], _EOC], strict=True):
            self._set_fat(this, nxt)
        return found

    # --- directories ------------------------------------------------------------------------

    def _slots(self, directory: _Dir, needed: int) -> int:
        """Index of the first of ``needed`` free entries at the end of ``directory``."""
        per = self.cluster_bytes // 32
        index = 0
        while True:
            if index >= len(directory.clusters) * per:
                new = self._allocate(1)[0]
                self._set_fat(directory.clusters[-1], new)
                self._write(self._offset(new), bytes(self.cluster_bytes))
                directory.clusters.append(new)
            cluster = directory.clusters[index // per]
            first = self._read(self._offset(cluster) + (index % per) * 32, 1)
            if first == b"\x00":
                break
            index += 1
        while index + needed > len(directory.clusters) * per:
            new = self._allocate(1)[0]
            self._set_fat(directory.clusters[-1], new)
            self._write(self._offset(new), bytes(self.cluster_bytes))
            directory.clusters.append(new)
        return index

    def _add_entries(self, parent: str, entries: list[bytes]) -> None:
        directory = self.dirs[parent]
        per = self.cluster_bytes // 32
        index = self._slots(directory, len(entries))
        for i, entry in enumerate(entries, start=index):
            self._write(self._offset(directory.clusters[i // per]) + (i % per) * 32, entry)

    def _names(self, short: str, long_name: str | None) -> tuple[bytes, list[bytes]]:
        sfn = sfn_bytes(short)
        return sfn, (_lfn_entries(long_name, sfn) if long_name is not None else [])

    def mkdir(self, parent: str, short: str, long_name: str | None = None) -> str:
        """Create directory ``short`` (GBK 8.3) in ``parent``; returns its path key."""
        cluster = self._allocate(1)[0]
        self._write(self._offset(cluster), bytes(self.cluster_bytes))
        up = self.dirs[parent].cluster if parent else 0
        self._write(self._offset(cluster),
                    _short_entry(b".          ", _DIR, cluster, 0)
                    + _short_entry(b"..         ", _DIR, up, 0))
        sfn, lfn = self._names(short, long_name)
        self._add_entries(parent, [*lfn, _short_entry(sfn, _DIR, cluster, 0)])
        key = f"{parent}/{long_name or short}".lstrip("/")
        self.dirs[key] = _Dir([cluster], cluster)
        return key

    def add_file(self, parent: str, short: str, data: bytes, long_name: str | None = None) -> str:
        """Write ``data`` as file ``short`` (GBK 8.3), with long name ``long_name`` if given."""
        count = -(-len(data) // self.cluster_bytes)
        clusters = self._allocate(count) if count else []
        for i, cluster in enumerate(clusters):
            chunk = data[i * self.cluster_bytes:(i + 1) * self.cluster_bytes]
            self._write(self._offset(cluster), chunk.ljust(self.cluster_bytes, b"\x00"))
        sfn, lfn = self._names(short, long_name)
        first = clusters[0] if clusters else 0
        self._add_entries(parent, [*lfn, _short_entry(sfn, _ARCHIVE, first, len(data))])
        return f"{parent}/{long_name or short}".lstrip("/")
