"""The built-in datasets plugin: readers, lookup order, download checks (no network) and registration."""

from __future__ import annotations

import gzip
import shutil
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

import miars_datasets
from miars_core.contracts.errors import MiarsError
from miars_datasets import (
    AmazonDigitalMusic,
    InteractionFile,
    LastFM2K,
    MovieLens100K,
    MovieLens1M,
    fetch,
    sha256_of,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ML100K_DIR = SHARED / "movielens-100k"
ML1M_PAIRS = SHARED / "movielens-1m" / "ml-1m-pairs.tsv.gz"

needs_ml100k = pytest.mark.skipif(not (ML100K_DIR / "u.data.gz").is_file(), reason=f"real data not present: {ML100K_DIR}/u.data.gz")
needs_ml1m = pytest.mark.skipif(not ML1M_PAIRS.is_file(), reason=f"real data not present: {ML1M_PAIRS}")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Point the cache at an empty folder and make any network access fail loudly."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("MIARS_CACHE", str(cache))

    def no_network(url, dest):
        raise AssertionError(f"test tried to download {url}")

    monkeypatch.setattr(fetch, "_urlretrieve", no_network)
    return cache


def pairs(inter) -> set[tuple]:
    coo = inter.matrix.tocoo()
    return set(zip(inter.user_ids[coo.row].tolist(), inter.item_ids[coo.col].tolist()))


def write(path: Path, text: str, gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8", newline="") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8", newline="")
    return path


EXPECTED = {(1, 10), (1, 20), (2, 10), (3, 30)}  # the pairs of every small fixture below (one duplicate)


# --------------------------------------------------------------------------- ml-100k


def test_module_import_is_cheap():
    # Importing the plugin (what `miars list` does) must not pull heavy libraries.
    import subprocess

    code = "import sys, miars_datasets; print(sorted(m for m in ('pandas','torch','recbole','scipy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_ml100k_embedded():
    if miars_datasets.embedded_ml100k() is None:
        pytest.skip("RecBole's bundled ml-100k.inter is not installed")
    data = MovieLens100K().load()
    assert (data.n_users, data.n_items, data.n_interactions) == (943, 1682, 100000)
    assert data.user_ids.dtype.kind == "i" and data.item_ids.dtype.kind == "i"
    assert data.user_ids[0] == 1 and data.user_ids[-1] == 943


@needs_ml100k
def test_ml100k_data_dir_matches_embedded():
    if miars_datasets.embedded_ml100k() is None:
        pytest.skip("RecBole's bundled ml-100k.inter is not installed")
    from_dir = MovieLens100K().load(data_dir=ML100K_DIR)
    embedded = MovieLens100K().load()
    assert from_dir.n_interactions == 100000
    np.testing.assert_array_equal(from_dir.user_ids, embedded.user_ids)
    np.testing.assert_array_equal(from_dir.item_ids, embedded.item_ids)
    assert (from_dir.matrix != embedded.matrix).nnz == 0


@needs_ml100k
def test_ml100k_sha256_of_official_file(tmp_path):
    plain = tmp_path / "u.data"
    with gzip.open(ML100K_DIR / "u.data.gz", "rb") as src, open(plain, "wb") as out:
        shutil.copyfileobj(src, out)
    assert sha256_of(plain) == MovieLens100K.sha256


def test_ml100k_archive_subfolder(tmp_path):
    write(tmp_path / "ml-100k" / "u.data", "1\t10\t5\t881250949\n2\t10\t3\t881250950\n1\t20\t4\t1\n3\t30\t1\t2\n1\t10\t2\t3\n")
    assert pairs(MovieLens100K().load(data_dir=tmp_path)) == EXPECTED


# --------------------------------------------------------------------------- ml-1m

ML1M_TEXT = "1::10::5::978300760\n1::20::3::978302109\n2::10::3::978301968\n3::30::4::978300275\n1::10::5::978824291\n"


@pytest.mark.parametrize("gz", [False, True])
def test_ml1m_ratings_dat(tmp_path, gz):
    write(tmp_path / ("ratings.dat.gz" if gz else "ratings.dat"), ML1M_TEXT, gz=gz)
    data = MovieLens1M().load(data_dir=tmp_path)
    assert pairs(data) == EXPECTED
    assert (data.n_users, data.n_items, data.n_interactions) == (3, 3, 4)
    assert data.user_ids.dtype.kind == "i"


def test_ml1m_archive_subfolder_and_cache(tmp_path, isolated_cache):
    write(tmp_path / "data" / "ml-1m" / "ratings.dat", ML1M_TEXT)
    assert pairs(MovieLens1M().load(data_dir=tmp_path / "data")) == EXPECTED
    write(isolated_cache / "ml-1m" / "ratings.dat", ML1M_TEXT)
    assert pairs(MovieLens1M().load()) == EXPECTED


def test_ml1m_pairs_alternate(tmp_path):
    write(tmp_path / "ml-1m-pairs.tsv.gz", "1\t10\n1\t20\n2\t10\n3\t30\n", gz=True)
    assert pairs(MovieLens1M().load(data_dir=tmp_path)) == EXPECTED


def test_ml1m_malformed(tmp_path):
    write(tmp_path / "ratings.dat", "1::10::5::978300760\n1::20::3\n")
    with pytest.raises(MiarsError, match=r"ratings\.dat.*UserID::MovieID::Rating::Timestamp"):
        MovieLens1M().load(data_dir=tmp_path)
    write(tmp_path / "ratings.dat", "1,10,5,978300760\n")
    with pytest.raises(MiarsError, match=r"ratings\.dat"):
        MovieLens1M().load(data_dir=tmp_path)
    write(tmp_path / "ratings.dat", "1::x::5::978300760\n")
    with pytest.raises(MiarsError, match=r"ratings\.dat.*'x', not an integer"):
        MovieLens1M().load(data_dir=tmp_path)
    write(tmp_path / "ratings.dat", "")
    with pytest.raises(MiarsError, match=r"ratings\.dat.*empty"):
        MovieLens1M().load(data_dir=tmp_path)


# --------------------------------------------------------------------------- lastfm-2k and adm


@pytest.mark.parametrize("gz", [False, True])
def test_lastfm_user_artists(tmp_path, gz):
    text = "userID\tartistID\tweight\n1\t10\t13883\n1\t20\t11690\n2\t10\t11351\n3\t30\t10300\n1\t10\t5\n"
    write(tmp_path / ("user_artists.dat.gz" if gz else "user_artists.dat"), text, gz=gz)
    data = LastFM2K().load(data_dir=tmp_path)
    assert pairs(data) == EXPECTED
    assert data.user_ids.dtype.kind == "i"


def test_lastfm_missing_header(tmp_path):
    write(tmp_path / "user_artists.dat", "2\t51\t13883\n2\t52\t11690\n")
    with pytest.raises(MiarsError, match=r"user_artists\.dat.*userID"):
        LastFM2K().load(data_dir=tmp_path)


@pytest.mark.parametrize("gz", [False, True])
def test_adm_ratings_csv(tmp_path, gz):
    text = (
        "A2EFCYXHNK06IS,5555991584,5.0,978480000\n"
        "A1WR23ER5HMAA9,5555991584,5.0,953424000\n"
        "A2EFCYXHNK06IS,0001388703,4.0,1393545600\n"
        "A2EFCYXHNK06IS,5555991584,3.0,1393545601\n"
    )
    write(tmp_path / ("ratings_Digital_Music.csv.gz" if gz else "ratings_Digital_Music.csv"), text, gz=gz)
    data = AmazonDigitalMusic().load(data_dir=tmp_path)
    assert pairs(data) == {
        ("A2EFCYXHNK06IS", "5555991584"),
        ("A1WR23ER5HMAA9", "5555991584"),
        ("A2EFCYXHNK06IS", "0001388703"),  # leading zeros kept: ASINs are strings
    }


def test_adm_malformed(tmp_path):
    write(tmp_path / "ratings_Digital_Music.csv", "user,item,rating,timestamp\nA1,B1,5.0,1\n")
    with pytest.raises(MiarsError, match=r"ratings_Digital_Music\.csv.*user,item,rating,timestamp.*'rating'"):
        AmazonDigitalMusic().load(data_dir=tmp_path)
    write(tmp_path / "ratings_Digital_Music.csv", "A1,B1,5.0\n")
    with pytest.raises(MiarsError, match=r"ratings_Digital_Music\.csv.*3 columns"):
        AmazonDigitalMusic().load(data_dir=tmp_path)


# --------------------------------------------------------------------------- file


@pytest.mark.parametrize(
    "name, text",
    [
        ("tab.tsv", "1\t10\t5\n1\t20\t3\n2\t10\t3\n3\t30\t4\n1\t10\t1\n"),
        ("tab-header.tsv", "user_id\titem_id\trating\n1\t10\t5\n1\t20\t3\n2\t10\t3\n3\t30\t4\n"),
        ("comma.csv", "1,10\n1,20\n2,10\n3,30\n"),
        ("comma-header.csv", "userId,movieId,rating,timestamp\n1,10,4.0,964982703\n1,20,4.0,1\n2,10,1,2\n3,30,5,3\n"),
        ("colons.dat", ML1M_TEXT),
        ("colons-header.dat", "user::item::rating::ts\n" + ML1M_TEXT),
        ("semicolon.csv", "1;10;5\n1;20;3\n2;10;3\n3;30;4\n"),
        ("spaces.txt", "1 10  5\n1   20 3\n2 10 3\n3 30 4\n"),
        ("crlf.csv", "u,i\r\n1,10\r\n1,20\r\n2,10\r\n3,30\r\n"),
    ],
)
@pytest.mark.parametrize("gz", [False, True])
def test_file_delimited(tmp_path, name, text, gz):
    path = write(tmp_path / (name + ".gz" if gz else name), text, gz=gz)
    data = InteractionFile(path).load()
    assert pairs(data) == EXPECTED
    assert data.user_ids.dtype.kind == "i" and data.item_ids.dtype.kind == "i"


def test_file_string_ids(tmp_path):
    path = write(tmp_path / "ids.csv", "user,item\nalice,007\nbob,7\nalice,x-1\n")
    data = InteractionFile(path).load()
    assert pairs(data) == {("alice", "007"), ("bob", "7"), ("alice", "x-1")}
    assert data.n_items == 3  # "007" and "7" stay distinct


def test_file_explicit_sep_and_header(tmp_path):
    path = write(tmp_path / "odd.txt", "1|10\n1|20\n2|10\n3|30\n")
    assert pairs(InteractionFile(path, sep="|", header=False).load()) == EXPECTED
    path = write(tmp_path / "hdr.csv", "a,b\n1,2\n")
    assert pairs(InteractionFile(path, header=False).load()) == {("a", "b"), ("1", "2")}


def test_file_header_sniffing_keeps_data_rows(tmp_path):
    path = write(tmp_path / "nohdr.csv", "u1,i1\nu2,i2\n")
    assert pairs(InteractionFile(path).load()) == {("u1", "i1"), ("u2", "i2")}
    # An Amazon-style file read as a generic file: no header, string ids, first row kept.
    path = write(tmp_path / "amazon.csv", "AIDUSER1,B00ID01,5.0,1\nAIDUSER2,0001388703,4.0,2\n")
    assert pairs(InteractionFile(path).load()) == {("AIDUSER1", "B00ID01"), ("AIDUSER2", "0001388703")}


def test_file_utf8_bom(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffuserId,itemId\n1,10\n1,20\n2,10\n3,30\n".encode("utf-8"))
    data = InteractionFile(path).load()
    assert pairs(data) == EXPECTED and data.user_ids.dtype.kind == "i"


def test_file_reads_recbole_embedded_inter():
    inter = miars_datasets.embedded_ml100k()
    if inter is None:
        pytest.skip("RecBole's bundled ml-100k.inter is not installed")
    assert InteractionFile(inter).load().n_interactions == 100000


@pytest.mark.parametrize("gz", [False, True])
def test_file_recbole_inter(tmp_path, gz):
    text = (
        "timestamp:float\titem_id:token\trating:float\tuser_id:token\n"
        "881250949\t10\t3\t1\n881250950\t20\t3\t1\n1\t10\t1\t2\n2\t30\t5\t3\n"
    )
    path = write(tmp_path / ("toy.inter.gz" if gz else "toy.inter"), text, gz=gz)
    assert pairs(InteractionFile(path).load()) == EXPECTED


def test_file_recbole_inter_without_ids(tmp_path):
    path = write(tmp_path / "toy.inter", "uid:token\tiid:token\n1\t2\n")
    with pytest.raises(MiarsError, match=r"toy\.inter.*'user_id'"):
        InteractionFile(path).load()


def test_file_relative_to_data_dir(tmp_path):
    write(tmp_path / "d" / "x.csv", "1,10\n1,20\n2,10\n3,30\n")
    assert pairs(InteractionFile("x.csv").load(data_dir=tmp_path / "d")) == EXPECTED


def test_file_malformed(tmp_path):
    path = write(tmp_path / "one-column.txt", "1\n2\n3\n")
    with pytest.raises(MiarsError, match=r"one-column\.txt.*separator"):
        InteractionFile(path).load()
    path = write(tmp_path / "ragged.csv", "1,10\n2,20\n3,30,5,6\n")
    with pytest.raises(MiarsError, match=r"ragged\.csv"):
        InteractionFile(path).load()
    path = write(tmp_path / "empty.csv", "")
    with pytest.raises(MiarsError, match=r"empty\.csv.*empty"):
        InteractionFile(path).load()
    with pytest.raises(MiarsError, match=r"nothere\.csv.*does not exist"):
        InteractionFile(tmp_path / "nothere.csv").load()
    path = write(tmp_path / "bad.gz", "not gzip")
    path.write_bytes(b"\x1f\x8b\x08garbage")
    with pytest.raises(MiarsError, match=r"bad\.gz"):
        InteractionFile(path).load()


@needs_ml1m
def test_file_ml1m_pairs():
    start = time.perf_counter()
    data = InteractionFile(ML1M_PAIRS).load()
    elapsed = time.perf_counter() - start
    assert (data.n_users, data.n_items, data.n_interactions) == (6040, 3706, 1000209)
    assert data.user_ids.dtype.kind == "i"
    assert elapsed < 10, f"loading 1M pairs took {elapsed:.1f} s"


@needs_ml1m
def test_ml1m_from_shared_data_dir():
    # The shared folder holds ml-1m-pairs.tsv.gz (and a partial ratings file under another name).
    data = MovieLens1M().load(data_dir=ML1M_PAIRS.parent)
    assert (data.n_users, data.n_items, data.n_interactions) == (6040, 3706, 1000209)


# --------------------------------------------------------------------------- missing files and downloads


def test_missing_without_download(tmp_path):
    with pytest.raises(MiarsError) as err:
        MovieLens1M().load(data_dir=tmp_path)
    msg = str(err.value)
    assert "\n" not in msg
    for part in ("ratings.dat", "ratings.dat.gz", "--data-dir", "--download", MovieLens1M.url, tmp_path.name):
        assert part in msg
    with pytest.raises(MiarsError, match=r"user_artists\.dat.*--data-dir.*lastfm-2k"):
        LastFM2K().load()


def test_missing_data_dir(tmp_path):
    with pytest.raises(MiarsError, match=r"does not exist"):
        LastFM2K().load(data_dir=tmp_path / "nope")


def _fake_downloader(source: Path, calls: list):
    def copy(url, dest):
        calls.append(url)
        shutil.copyfile(source, dest)

    return copy


def test_download_zip_member_into_cache(tmp_path, isolated_cache, monkeypatch):
    archive = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ml-1m/README", "readme")
        zf.writestr("ml-1m/ratings.dat", ML1M_TEXT)
    calls: list = []
    monkeypatch.setattr(fetch, "_urlretrieve", _fake_downloader(archive, calls))
    data = MovieLens1M().load(download=True)
    assert pairs(data) == EXPECTED and calls == [MovieLens1M.url]
    assert sorted(p.name for p in (isolated_cache / "ml-1m").iterdir()) == ["ratings.dat"]
    MovieLens1M().load(download=True)  # now cached: no second download
    assert len(calls) == 1


def test_download_sha256_verified(tmp_path, isolated_cache, monkeypatch):
    csv = write(tmp_path / "src.csv", "A1,B1,5.0,1\nA2,B1,4.0,2\n")
    monkeypatch.setattr(AmazonDigitalMusic, "sha256", sha256_of(csv))
    monkeypatch.setattr(fetch, "_urlretrieve", _fake_downloader(csv, []))
    assert pairs(AmazonDigitalMusic().load(download=True)) == {("A1", "B1"), ("A2", "B1")}


def test_download_sha256_mismatch_leaves_nothing(tmp_path, isolated_cache, monkeypatch):
    csv = write(tmp_path / "src.csv", "A1,B1,5.0,1\n")
    calls: list = []
    monkeypatch.setattr(fetch, "_urlretrieve", _fake_downloader(csv, calls))
    with pytest.raises(MiarsError) as err:
        AmazonDigitalMusic().load(download=True)
    msg = str(err.value)
    assert "checksum mismatch" in msg and "ratings_Digital_Music.csv" in msg and AmazonDigitalMusic.sha256 in msg
    assert calls == [AmazonDigitalMusic.url]
    assert list((isolated_cache / "adm").iterdir()) == []  # no partial or temporary file left


def test_download_zip_member_sha256_mismatch(tmp_path, isolated_cache, monkeypatch):
    archive = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ml-100k/u.data", "1\t10\t5\t1\n")
    monkeypatch.setattr(fetch, "_urlretrieve", _fake_downloader(archive, []))
    # load() without data_dir would read RecBole's embedded copy; locate() is the download path.
    with pytest.raises(MiarsError, match="checksum mismatch for u.data"):
        MovieLens100K().locate(download=True)
    assert list((isolated_cache / "ml-100k").iterdir()) == []


def test_download_network_error_is_one_line(isolated_cache, monkeypatch):
    def fail(url, dest):
        Path(dest).write_bytes(b"partial")
        raise OSError("connection refused")

    monkeypatch.setattr(fetch, "_urlretrieve", fail)
    with pytest.raises(MiarsError, match=r"could not download .*connection refused.*by hand"):
        LastFM2K().load(download=True)
    assert list((isolated_cache / "lastfm-2k").iterdir()) == []


def test_download_bad_zip(tmp_path, isolated_cache, monkeypatch):
    junk = write(tmp_path / "junk.zip", "<html>not found</html>")
    monkeypatch.setattr(fetch, "_urlretrieve", _fake_downloader(junk, []))
    with pytest.raises(MiarsError, match="not a valid zip"):
        LastFM2K().load(download=True)
    assert list((isolated_cache / "lastfm-2k").iterdir()) == []


# --------------------------------------------------------------------------- registration


def test_plugin_registers_all_datasets():
    from miars_core.contracts.plugins import get_plugins

    registry = get_plugins(reload=True).registry("dataset")
    names = registry.names()
    for name in ("ml-100k", "ml-1m", "lastfm-2k", "adm", "file"):
        assert name in names
        entry = registry.get(name)
        assert entry.plugin == "datasets"
        assert entry.summary and "\n" not in entry.summary
    assert isinstance(registry.create("ml-1m"), MovieLens1M)
    assert registry.create("file", path="x.csv").get_params() == {"path": "x.csv", "sep": None, "header": None,
                                                                 "time": None}


def test_components_pass_check_dataset(tmp_path):
    from miars_core.kit.checks import check_dataset

    write(tmp_path / "ratings.dat", ML1M_TEXT)
    write(tmp_path / "user_artists.dat", "userID\tartistID\tweight\n1\t10\t3\n2\t20\t4\n")
    write(tmp_path / "ratings_Digital_Music.csv", "A1,B1,5.0,1\nA2,B1,4.0,2\n")
    write(tmp_path / "u.data", "1\t10\t5\t1\n2\t10\t3\t2\n")
    for factory in (MovieLens1M, LastFM2K, AmazonDigitalMusic, MovieLens100K):
        check_dataset(factory, data_dir=tmp_path)
    check_dataset(InteractionFile, path=str(tmp_path / "ratings.dat"))
    if miars_datasets.embedded_ml100k() is not None:
        assert check_dataset(MovieLens100K).n_interactions == 100000
