"""Reading shards as training does (data_prep.shards.read_samples, shard_format.decode_sample): the same samples
and arrays as webdataset and numpy give, on shards data_prep writes and on version-1 shards written through
tarfile (webdataset's TarWriter, pax and GNU members); damaged shards and bad members stop with errors naming
the file and the sample."""
from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import webdataset as wds

from data_prep.manifest import read_manifest
from data_prep.shard_format import ShardFormatError, decode_sample, encode_sample, npy_bytes
from data_prep.shards import ShardReadError, ShardWriter, read_samples, sample_members


def _webdataset(path) -> list[dict]:
    """webdataset's samples of a shard, without the url keys it adds."""
    return [{k: v for k, v in s.items() if k not in ("__url__", "__local_path__")}
            for s in wds.WebDataset(str(path), shardshuffle=False, empty_check=False)]


def _encoded(pairs: list[tuple[str, str]]) -> list[dict[str, bytes]]:
    """Real sentence pairs as samples: UTF-8 bytes as ids, a diagonal alignment."""
    samples = []
    for src, tgt in pairs:
        src_ids = np.frombuffer(src.encode(), dtype=np.uint8).astype(np.int32)
        tgt_ids = np.frombuffer(tgt.encode(), dtype=np.uint8).astype(np.int32)
        links = np.array([[i, i] for i in range(min(len(src_ids), len(tgt_ids)))], dtype=np.int32)
        samples.append(encode_sample(src_ids, tgt_ids, links, {"src_lang": "fr", "tgt_lang": "en", "src_text": src,
                                                               "tgt_text": tgt}))
    return samples


def _written(tmp_path, pairs) -> tuple:
    """One shard written by data_prep's ShardWriter; (path, its members' offsets, sample by sample)."""
    records = ShardWriter(tmp_path, "fr-en-train", 10_000, 1 << 30)
    for k, files in enumerate(_encoded(pairs)):
        records.write(f"fr-en-{k:09d}", files, {})
    path = tmp_path / records.close()[0]["path"]
    with tarfile.open(path) as tar:
        offsets = [m.offset for m in tar.getmembers()]
    return path, offsets


def test_dataset_shards_read_as_webdataset_and_numpy_read_them(small_dataset):
    dataset, _, _ = small_dataset
    manifest = read_manifest(dataset)
    for entry in manifest["pairs"].values():
        for shard in entry["shards"]:
            raws = list(read_samples(dataset / shard["path"]))
            assert len(raws) == shard["samples"] and raws == _webdataset(dataset / shard["path"])
            for raw in raws:
                decoded, arrays_only = decode_sample(raw), decode_sample(raw, meta=False)
                assert decoded["meta"] == json.loads(raw["meta.json"]) and "meta" not in arrays_only
                for name in ("src_ids", "tgt_ids", "align"):
                    expected = np.load(io.BytesIO(raw[f"{name}.npy"]), allow_pickle=False)
                    for got in (decoded[name], arrays_only[name]):
                        assert got.dtype == expected.dtype and got.shape == expected.shape
                        assert np.array_equal(got, expected)


def test_tarfile_written_shards_read_as_webdataset_reads_them(tmp_path, fr_pairs):
    """Version-1 datasets were first written through webdataset's TarWriter (tarfile headers); other tar
    writers add pax or GNU headers for long names and directories: the reader hands those to tarfile."""
    samples = _encoded(fr_pairs[:12])
    paths = [tmp_path / "tarwriter.tar"]
    with wds.TarWriter(str(paths[0])) as writer:
        for k, files in enumerate(samples):
            writer.write({"__key__": f"fr-en-{k:09d}", **files})
    for name, fmt in (("pax", tarfile.PAX_FORMAT), ("gnu", tarfile.GNU_FORMAT)):
        paths.append(tmp_path / f"{name}.tar")
        with tarfile.open(paths[-1], "w", format=fmt) as tar:
            for k, files in enumerate(samples):
                if k == 5:
                    tar.addfile(tarfile.TarInfo("fr-en"), None)  # a non-file member mid-way is skipped
                # Sample 3's key is too long for a plain ustar name; the ones after follow it through tarfile.
                key = f"fr-en/{'long-' * 30 if k == 3 else ''}{k:09d}"
                for field, data in files.items():
                    info = tarfile.TarInfo(f"{key}.{field}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    for path in paths:
        raws = list(read_samples(path))
        assert len(raws) == len(samples) and raws == _webdataset(path), path.name
        assert [decode_sample(r)["meta"] for r in raws] == [json.loads(s["meta.json"]) for s in samples]


@pytest.mark.parametrize("damage", ["cut_at_a_member", "cut_inside_a_member", "bad_checksum", "empty"])
def test_a_damaged_shard_gives_its_whole_samples_before_the_damage(tmp_path, fr_pairs, damage):
    path, offsets = _written(tmp_path, fr_pairs[:30])
    whole = list(read_samples(path))
    keep = 20  # samples before the damage
    data = bytearray(path.read_bytes())
    if damage == "cut_at_a_member":
        del data[offsets[4 * keep]:]
    elif damage == "cut_inside_a_member":
        del data[offsets[4 * keep] + 513:]  # one byte into the data of sample 20's first member
    elif damage == "bad_checksum":
        data[offsets[4 * keep] + 148:offsets[4 * keep] + 156] = b"0000000\0"
    else:
        keep = 0
        data.clear()
    path.write_bytes(bytes(data))
    got = []
    if damage in ("cut_inside_a_member", "bad_checksum"):
        with pytest.raises(ShardReadError, match=str(path)):
            for sample in read_samples(path):
                got.append(sample)
    else:
        got = list(read_samples(path))
    assert got == whole[:keep]  # the damage falls between samples 19 and 20: sample 20 is not begun


def test_a_field_twice_in_one_sample_is_an_error(tmp_path, fr_pairs):
    files = _encoded(fr_pairs[:1])[0]
    path = tmp_path / "twice.tar"
    path.write_bytes(sample_members("fr-en-000000000", files) * 2 + bytes(1024))
    with pytest.raises(ShardReadError, match=r"twice.tar: sample fr-en-000000000 has two src_ids.npy members"):
        list(read_samples(path))


def _npy(array: np.ndarray, **options) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array(out, array, **options)
    return out.getvalue()


LINKS = np.array([[1, 1], [2, 3], [3, 2]], dtype=np.int32)


@pytest.mark.parametrize("align", [
    npy_bytes(LINKS),  # what data_prep writes
    _npy(LINKS),  # numpy's own writer
    _npy(np.asfortranarray(LINKS)),
    _npy(LINKS, version=(2, 0)),
    _npy(LINKS, version=(3, 0)),
], ids=["npy_bytes", "numpy", "fortran_order", "version_2", "version_3"])
def test_npy_members_decode_as_numpy_loads_them(fr_pairs, align):
    files = {**_encoded(fr_pairs[:1])[0], "align.npy": align, "__key__": "fr-en-000000007"}
    got = decode_sample(files)["align"]
    expected = np.load(io.BytesIO(align), allow_pickle=False)
    assert got.dtype == expected.dtype and np.array_equal(got, expected)


@pytest.mark.parametrize("member,message", [
    (npy_bytes(np.arange(5))[:-3], r"17 bytes of data for shape \(5,\), expected 20"),
    (npy_bytes(np.arange(5)) + b"\0", r"21 bytes of data for shape \(5,\), expected 20"),
    (_npy(np.arange(5, dtype=np.float32)), "dtype is float32, expected int32"),
    (_npy(np.arange(5, dtype=">i4")), "dtype is >i4, expected int32"),
    (_npy(np.array([{"a": 1}], dtype=object), allow_pickle=True), "dtype is object, expected int32"),
    (b"\x93NUMPY\x01\x00\x08\x00os.exit\n", "not a plain .npy array"),
    (b'[1, 2, 3]', "no npy magic"),
], ids=["short", "long", "float32", "big_endian", "pickle", "header_not_a_dict", "not_npy"])
def test_a_bad_npy_member_names_the_sample_and_file(fr_pairs, member, message):
    files = {**_encoded(fr_pairs[:1])[0], "src_ids.npy": member, "__key__": "fr-en-000000007"}
    with pytest.raises(ShardFormatError, match=f"fr-en-000000007.src_ids.npy: .*{message}"):
        decode_sample(files)
