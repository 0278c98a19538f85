"""docs/config.md's key reference is generated from the schema's `#:` comments: the page and the
code must agree, and every key must say what it means."""

from __future__ import annotations

import dataclasses

import pytest

from jaxllm.config import Config, docs, to_dict


def _leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    """Dotted leaf keys of a plain nested dict, found without the generator's own walk."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_page_matches_the_code():
    current = docs.PAGE.read_text(encoding="utf-8")
    assert docs.render_page(current) == current, "docs/config.md is stale: run `python -m jaxllm.config.docs`"


def test_every_leaf_key_is_listed():
    listed = [k.key for k in docs.keys()]
    assert len(listed) == len(set(listed))
    assert set(listed) == set(_leaves(to_dict(Config())))
    page = docs.PAGE.read_text(encoding="utf-8")
    for key in listed:
        assert f"| `{key}` |" in page, f"{key} is not in docs/config.md"


def test_every_leaf_key_has_a_comment():
    assert docs.undocumented() == []
    for k in docs.keys():
        assert k.doc.strip(), f"{k.key} has no #: comment where it is defined"
    for name, doc, entries in docs.sections():
        assert doc.strip() and entries, f"section {name} has no #: comment on Config, or no keys"


def test_page_shows_defaults_and_types():
    rows = {k.key: k for k in docs.keys()}
    assert rows["model.num_kv_heads"].type == "int | null" and rows["model.num_kv_heads"].default is None
    assert rows["data.inputs"].type == "list of str"
    assert rows["model.attention_impl"].type == "'auto' | 'xla' | 'dot_product' | 'splash'"
    page = docs.PAGE.read_text(encoding="utf-8")
    assert "| `optimizer.lr` | float | `0.0003` |" in page
    assert "| `model.num_kv_heads` | int \\| null | `null` |" in page
    assert "<!-- keys:begin -->" in page and "## Loading" in page  # the hand-written prose stays


@dataclasses.dataclass(frozen=True)
class _Example:
    #: The first line,
    #: and its second.
    documented: int = 1
    # a plain comment is not documentation
    plain: int = 2
    trailing: int = 3  #: a trailing comment is not read either


def test_field_docs_reads_only_the_doc_lines_above_a_field():
    assert docs.field_docs(_Example) == {"documented": "The first line, and its second.", "plain": "", "trailing": ""}


def test_check_flag_and_rewrite(tmp_path, capsys):
    page = tmp_path / "config.md"
    page.write_text(docs.PAGE.read_text(encoding="utf-8"), encoding="utf-8")
    assert docs.main(["--check", "--page", str(page)]) == 0
    stale = page.read_text(encoding="utf-8").replace("| `model.d_model` |", "| `model.width` |")
    page.write_text(stale, encoding="utf-8")
    assert docs.main(["--check", "--page", str(page)]) == 1
    assert "stale" in capsys.readouterr().err
    assert page.read_text(encoding="utf-8") == stale  # --check writes nothing
    assert docs.main(["--page", str(page)]) == 0
    assert page.read_text(encoding="utf-8") == docs.PAGE.read_text(encoding="utf-8")


def test_page_without_markers_is_refused():
    with pytest.raises(ValueError, match="markers"):
        docs.render_page("# no markers here\n")
