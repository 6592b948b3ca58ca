"""tools/markers.py, the one way the tools write generated text into a committed page."""
import pytest

from tools.markers import block, markers, replace


def test_a_block_is_rewritten_in_place_and_the_authors_text_is_kept():
    page = "# Title\n\nintro\n\n<!-- table -->\nOLD\n<!-- end of table -->\n\nafter\n"
    once = replace(page, "table", "| a |\n|---|")
    assert once == "# Title\n\nintro\n\n<!-- table -->\n| a |\n|---|\n<!-- end of table -->\n\nafter\n"
    assert replace(once, "table", "| a |\n|---|") == once  # regenerated from the same data: no change
    assert block(once, "table") == "| a |\n|---|" and block(once, "other") is None


def test_a_missing_block_is_appended_only_where_asked():
    with pytest.raises(SystemExit) as err:
        replace("# Title\n", "table", "x")
    assert "<!-- table -->" in str(err.value)
    start, end = markers("table")
    assert replace("# Title\n", "table", "x", append=True) == f"# Title\n\n{start}\nx\n{end}\n"
