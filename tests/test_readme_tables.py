"""The README's measured tables are generated from benchmarks/results/ and must match them (no drift)."""

import re

from benchmarks.readme_tables import BLOCKS, REPO, main, render


def test_readme_tables_match_the_results(capsys):
    assert main(["--check"]) == 0, capsys.readouterr().err
    text = (REPO / "README.md").read_text()
    for name in BLOCKS:
        assert f"<!-- results:{name} -->" in text


def test_a_stale_table_is_caught(tmp_path):
    text = (REPO / "README.md").read_text()
    start = text.index("<!-- results:export-int8 -->")
    cell = re.search(r"\| (\d\.\d{5}) \|", text[start:])  # the first parity cell of a generated table
    at = start + cell.start(1)
    stale = text[:at] + ("0.12345" if cell.group(1) != "0.12345" else "0.54321") + text[at + 7:]
    assert stale != text and render(stale) == text
    readme = tmp_path / "README.md"
    readme.write_text(stale)
    assert main(["--check", "--readme", str(readme)]) == 1
