"""Fuzz the loaders: any file content either loads or raises DataError, never another error."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.data.loaders import DataError, Interactions, load_dataset

GOOD: dict[str, dict[str, bytes]] = {
    "ml-latest-small": {
        "movies.csv": b"movieId,title,genres\n1,Toy Story (1995),Animation|Comedy\n"
        b'2,"A, B (1990)",Drama\n',
        "ratings.csv": b"userId,movieId,rating,timestamp\n1,1,4.0,10\n1,2,3.5,11\n2,1,1.0,12\n",
    },
    "ml-100k": {
        "u.item": b"1|Toy (1995)|d||u|" + b"|".join([b"0"] * 18 + [b"1"]) + b"\n",
        "u.user": b"1|24|M|technician|85711\n2|53|F|other|94043\n",
        "u.data": b"1\t1\t5\t10\n2\t1\t3\t11\n",
    },
    "ml-1m": {
        "movies.dat": b"1::Toy Story (1995)::Animation|Comedy\n2::Heat (1995)::Action\n",
        "users.dat": b"1::F::1::10::48067\n2::M::56::16::70072\n",
        "ratings.dat": b"1::1::5::978300760\n2::2::3::978302109\n",
    },
}
TARGETS = [(name, fname) for name, files in GOOD.items() for fname in files]
SEPARATORS = {"ml-latest-small": ",", "ml-100k": "|", "ml-1m": "::"}
FUZZ = settings(
    max_examples=50, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


def load_with(name: str, fname: str, content: bytes) -> Interactions | None:
    """Write the good files of ``name`` with ``fname`` replaced, load; DataError -> None."""
    with tempfile.TemporaryDirectory() as tmp:
        for other, good in GOOD[name].items():
            (Path(tmp) / other).write_bytes(content if other == fname else good)
        try:
            return load_dataset(name, tmp, min_interactions=0)
        except DataError as err:
            assert f"{fname}" in str(err) or any(f in str(err) for f in GOOD[name]), str(err)
            return None


def check(data: Interactions | None) -> None:
    if data is not None:
        assert len(data.users) == len(data.items) == len(data.timestamps) > 0
        assert data.items.max() < data.n_items and data.users.max() < data.n_users


@FUZZ
@given(target=st.sampled_from(TARGETS), content=st.binary(max_size=300))
def test_random_bytes(target: tuple[str, str], content: bytes) -> None:
    check(load_with(*target, content))


@FUZZ
@given(
    target=st.sampled_from(TARGETS),
    position=st.integers(min_value=0, max_value=200),
    junk=st.binary(min_size=1, max_size=4),
    delete=st.integers(min_value=0, max_value=3),
)
def test_mutated_good_file(
    target: tuple[str, str], position: int, junk: bytes, delete: int
) -> None:
    good = GOOD[target[0]][target[1]]
    at = position % (len(good) + 1)
    check(load_with(*target, good[:at] + junk + good[at + delete :]))


FIELD = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.text(alphabet=st.sampled_from('0123456789-+., "|:\t\r\nabcé()_\x00\x85'), max_size=8),
)


@FUZZ
@given(
    target=st.sampled_from(TARGETS),
    rows=st.lists(st.lists(FIELD, min_size=0, max_size=6), min_size=0, max_size=6),
    keep_header=st.booleans(),
)
def test_random_rows(target: tuple[str, str], rows: list[list[str]], keep_header: bool) -> None:
    name, fname = target
    sep = SEPARATORS[name] if fname != "u.data" else "\t"
    lines = [sep.join(row) for row in rows]
    if keep_header and name == "ml-latest-small":
        lines.insert(0, GOOD[name][fname].split(b"\n")[0].decode())
    encoding = "utf-8" if name == "ml-latest-small" else "latin-1"
    content = "\n".join(lines).encode(encoding, errors="replace")
    check(load_with(name, fname, content))
