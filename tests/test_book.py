"""The book's configuration: every chapter is in the table of contents, and the smoke config mirrors the main one."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
yaml = pytest.importorskip("yaml")


def _toc_files(node) -> list[str]:
    files = []
    if isinstance(node, dict):
        if "file" in node:
            files.append(node["file"])
        for value in node.values():
            files += _toc_files(value)
    elif isinstance(node, list):
        for value in node:
            files += _toc_files(value)
    return files


def test_every_chapter_is_in_the_toc_and_every_toc_entry_exists():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    entries = [toc["root"], *_toc_files(toc.get("parts", []))]
    chapters = {f"chapters/{p.stem}" for p in (ROOT / "chapters").glob("*.py")}
    assert chapters <= set(entries), f"chapters missing from _toc.yml: {sorted(chapters - set(entries))}"
    for entry in entries:
        assert any((ROOT / f"{entry}{ext}").exists() for ext in (".py", ".md")), f"_toc.yml entry {entry} has no file"


def test_smoke_config_differs_only_in_execution_cache_and_timeout():
    main = yaml.safe_load((ROOT / "_config.yml").read_text())
    smoke = yaml.safe_load((ROOT / "_config.smoke.yml").read_text())
    assert {k: v for k, v in main.items() if k != "execute"} == {k: v for k, v in smoke.items() if k != "execute"}
    assert main["execute"]["cache"] != smoke["execute"]["cache"]
    assert smoke["execute"]["raise_on_error"] is True and main["execute"]["raise_on_error"] is True
    assert main["only_build_toc_files"] is True
